"""The Globus Compute function the flow's Reconstruct state calls.

Registered with Globus Compute and run on the endpoint's workers (Polaris, or
the local engine). Globus Compute's default code serializer (``DillCode``) ships a
module-level function *by reference*: the endpoint imports
``functions.reconstruct.reconstruct_view`` from the ptychoflow installed in its own
environment, so that installation must match this one (``ptychoflow deploy`` and
``ptychoflow check`` compare the code hash). The body still imports inside itself and
reads no module globals, so it also runs if shipped by value. Paths and options in, a
small JSON summary out; one call into ``recon``.
"""

from __future__ import annotations

from typing import Any


def reconstruct_view(
    input_path: str,
    output_dir: str,
    recon: dict[str, Any] | None = None,
    view_name: str | None = None,
    gpu_lock_path: str | None = None,
    beamline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Reconstruct one view (a CXI file) into ``<output_dir>/<view name>.h5`` and a preview.

    Parameters
    ----------
    input_path
        The view's CXI file on the compute side, e.g. ``.../input/100/view003.cxi``.
    output_dir
        Where the result file and its PNG preview go (created when missing).

    Both paths must resolve (symbolic links followed, ``..`` removed) into one of the
    folders named by ``PTYCHOFLOW_ALLOWED_ROOTS`` on the endpoint
    (:mod:`functions.allowed_roots`), and so must every file the input's HDF5 external
    links and virtual datasets reach (external raw storage is refused;
    :mod:`recon.hdf5_confined`); the result never replaces the input or a file
    that is not a ptychoflow result, and the output folder is checked to be writable
    before any GPU is claimed.
    recon
        Reconstruction options, the flow input's ``recon`` section
        (:class:`recon.options.ReconOptions` fields); None for the defaults.
    view_name
        Stem of the result file; default the input file's stem (``view003``).
    beamline
        For a beamline's scan: the ``[beamline]`` settings
        (:class:`recon.beamline.BeamlineSettings` as a dict); ``input_path`` is then its
        diffraction (master) file, read through the Ptychodus reader they name, with the
        files it needs beside it. None or empty for a CXI or npz view.
    gpu_lock_path
        The node-local GPU lock file; default ``$PTYCHOFLOW_GPU_LOCK`` or
        ``/dev/shm/ptychoflow-<uid>/availgpus``. Another path must lie under the allowed
        roots.

    Returns
    -------
    dict, JSON-ready and small (well under Globus Compute's 10 MB):
        ``output``, ``preview`` (paths), ``iterations`` (int), ``final_cost`` (float),
        ``devices`` (device ordinals used), ``backend`` (``numpy``/``cupy``),
        ``host``, ``input``, ``gpus`` (GPU ids claimed on the node; empty on CPU),
        ``angle_deg`` (the view's rotation angle, when the input records one),
        ``seconds`` ({``load``, ``solve``, ``write``, ``gpu_wait``, ``total``}),
        ``ptychoflow_version`` and ``code_hash`` (:mod:`functions.code_identity`), and
        ``worker`` (:func:`functions.code_identity.worker_identity`: uid, the GPU the
        worker was given in ``CUDA_VISIBLE_DEVICES``, CuPy and CUDA driver versions).

    Raises
    ------
    functions.allowed_roots.AllowedRootsNotSetError, functions.allowed_roots.PathNotAllowedError
        ``PTYCHOFLOW_ALLOWED_ROOTS`` is not set, or a path lies outside it (the same
        message whether or not that path exists).
    recon.errors.OutputPathError, recon.errors.OutputNotWritableError
        The result would replace the input or a file that is not a ptychoflow result, or
        the output folder cannot be written.
    recon.errors.InputFileNotFound, recon.errors.InputError
        The input is missing or malformed; the message names the file and the reason
        (``scan100/view000.cxi: /entry_1/data_1/data is missing``).
    recon.errors.OptionsError
        An unknown or out-of-range option.
    recon.errors.DeviceError, functions.gpu_lock.GpuUnavailableError
        The GPUs asked for do not exist, or stayed busy for ``$PTYCHOFLOW_GPU_WAIT``
        seconds (default 3600).

    GPUs: when the backend resolves to CuPy, the number of GPUs comes from
    ``recon["devices"]`` or from the view's size (``choose_gpu_count``); they are
    claimed through the node's fcntl lock and released when done, even on failure.
    On the CPU no lock is taken and ``devices`` is the number of NumPy partitions.
    """
    import contextlib
    import json
    import os
    import pathlib
    import socket
    import time

    from functions.allowed_roots import allowed_roots, confined
    from functions.code_identity import code_identity, worker_identity
    from functions.gpu_lock import GpuPool, choose_gpu_count, configured_state_path
    from functions.pinned_paths import PinnedFolder, PinnedInput
    from recon.backend import is_cupy, resolve_backend
    from recon.cxi import peek_view_shape
    from recon.errors import InputError, OptionsError, PtychoflowError
    from recon.options import ReconOptions
    from recon.output_path import check_folder_writable, checked_output_path

    started = time.perf_counter()
    label = "/".join(pathlib.Path(input_path).parts[-2:])  # "scan100/view000.cxi"

    fft = os.environ.get("PTYCHOFLOW_FFT", "")
    if fft.lower() not in ("", "scipy", "fftw"):
        # recon reads it as "scipy or not"; a typo must not silently pick another FFT.
        raise OptionsError(
            f"{label}: PTYCHOFLOW_FFT={fft!r} on this endpoint is not known; expected "
            "'scipy' (pocketfft), 'fftw' or unset (FFTW when installed, else pocketfft)"
        )
    try:
        options = ReconOptions.from_dict(recon)
    except OptionsError as err:
        raise OptionsError(f"{label}: {err}") from err
    if view_name is not None and (
        not view_name or view_name in (".", "..") or "/" in view_name or "\\" in view_name
    ):
        raise InputError(f"{label}: view name {view_name!r} must be a plain file stem")

    # The fence first: nothing outside the allowed roots is looked at, not even its
    # existence. From here on only the resolved paths are used.
    roots = allowed_roots()
    source = confined(input_path, "input", roots)
    output_folder = confined(output_dir, "output folder", roots)
    configured_lock = configured_state_path()
    if gpu_lock_path is not None and os.path.abspath(gpu_lock_path) != os.path.abspath(
        configured_lock
    ):
        confined(gpu_lock_path, "GPU lock file", roots)  # a caller may not pick any file

    # Open the input and the output folder once, now, and use only the descriptors from
    # here on (functions.pinned_paths): a folder swapped for a link during the solve
    # changes nothing. Reading through the input folder's descriptor keeps an HDF5
    # file's relative links (an Eiger master's data files) resolving beside it.
    stem = view_name or pathlib.Path(input_path).stem
    output_real = confined(output_folder / f"{stem}.h5", "result file", roots)
    confined(output_real.with_suffix(".png"), "preview", roots)  # a link out of the roots
    pinned_input = PinnedInput(source, roots, label)
    try:
        pinned_output = PinnedFolder(output_folder, "output folder", roots, create=True)
    except BaseException:
        pinned_input.close()
        raise

    def real(text: str) -> str:
        return pinned_output.real(pinned_input.folder.real(text))

    try:
        # The view's size, cheaply: only the dataset's shape is read (for a beamline
        # scan, the reader's metadata, after every file its links reach is checked
        # against the roots).
        settings = None
        try:
            if beamline:
                from recon.beamline import BeamlineSettings, needed_files, peek_beamline_shape

                settings = BeamlineSettings.from_dict(beamline, where=f"{label}: beamline")
                needed_files(pathlib.Path(pinned_input.path), settings, roots)
                shape = peek_beamline_shape(pathlib.Path(pinned_input.path), settings)
            else:
                shape = peek_view_shape(pinned_input.path, label, allowed_roots=roots)
        except PtychoflowError as err:
            raise type(err)(real(str(err))) from err

        # Never over the input or a stranger's file; a read-only folder fails now, not
        # after the reconstruction.
        output = pathlib.Path(pinned_output.path(output_real.name))
        try:
            checked_output_path(pinned_input.path, output)
            check_folder_writable(pathlib.Path(pinned_output.path()))
        except PtychoflowError as err:
            raise type(err)(real(str(err))) from err

        xp = resolve_backend(options.backend.value)
        pool = None
        gpus: list[int | str] = []
        device_ids = None
        gpu_wait = 0.0
        if is_cupy(xp):
            pool = GpuPool(gpu_lock_path)
            count = choose_gpu_count(
                shape[0], shape[1:], available=len(pool.gpus), requested=options.devices
            )
            waited_from = time.perf_counter()
            timeout = float(os.environ.get("PTYCHOFLOW_GPU_WAIT", "3600"))
            gpus = pool.claim(count, timeout=timeout)
            gpu_wait = time.perf_counter() - waited_from
            device_ids = pool.device_ordinals(gpus)
        try:
            from recon.api import reconstruct_file

            try:
                # Progress (iteration, cost, time left, an intermediate phase image)
                # beside the result while the solver runs; the local backend and the
                # portal read it.
                result = reconstruct_file(
                    pinned_input.path,
                    str(output),
                    options,
                    device_ids=device_ids,
                    allowed_roots=roots,
                    beamline=settings,
                    progress_folder=pinned_output.path(),
                )
            except InputError as err:
                message = real(str(err))
                if source.name in message:
                    raise InputError(message) from err
                raise InputError(f"{label}: {message}") from err
            except PtychoflowError as err:
                raise type(err)(real(str(err))) from err
        finally:
            if pool is not None and gpus:
                pool.release(gpus)
        try:
            pinned_input.check_unchanged()
        except InputError:
            for name in (output.name, output.with_suffix(".png").name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=pinned_output.fd)
            raise
        # The result names its input by its real path, not the descriptor's.
        import h5py

        if os.path.isfile(output):
            with h5py.File(output, "r+") as handle:
                handle.attrs["input"] = str(source)
        result = {
            key: real(value) if isinstance(value, str) else value
            for key, value in dict(result).items()
        }
    finally:
        pinned_output.close()
        pinned_input.close()

    summary = dict(result)
    summary.update(host=socket.gethostname(), input=str(source), gpus=list(gpus))
    from recon.cxi import read_rotation_angle

    # A tomographic view's angle, when recorded (read confined, like the view itself).
    angle = read_rotation_angle(source, roots)
    if angle is not None:
        summary["angle_deg"] = angle
    summary.update(code_identity())  # ptychoflow_version, code_hash: what ran on the endpoint
    summary["worker"] = worker_identity()  # who ran it, on which GPU
    summary["seconds"] = {
        **dict(result.get("seconds") or {}),
        "gpu_wait": gpu_wait,
        "total": time.perf_counter() - started,
    }

    def plain(value: Any) -> Any:  # NumPy scalars and arrays, paths -> JSON types
        if hasattr(value, "tolist"):
            return value.tolist()
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError(f"{type(value).__name__} in the summary is not JSON data")

    plain_summary: dict[str, Any] = json.loads(json.dumps(summary, default=plain))
    return plain_summary
