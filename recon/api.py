"""One call from a file to a result file: what the CLI and the compute function use."""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from recon.options import ReconOptions
from recon.ptycho import ProgressCallback, gpu_claim_for, reconstruct

if TYPE_CHECKING:
    from recon.beamline import BeamlineSettings


def reconstruct_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    options: ReconOptions | None = None,
    device_ids: Sequence[int] | None = None,
    progress: ProgressCallback | None = None,
    *,
    preview_deramp: bool = True,
    memory_limit: int | None = None,
    allowed_roots: Sequence[os.PathLike[str]] | None = None,
    beamline: BeamlineSettings | None = None,
    progress_folder: str | os.PathLike[str] | None = None,
) -> dict:
    """Load a view (CXI, or the npz test format), reconstruct it, write the result.

    ``output_path`` is a result file (``.h5``/``.hdf5``) or a folder (existing, or
    ending in ``/``) that gets ``<input stem>.h5``; it is checked before anything is
    loaded (:mod:`recon.output_path`: never the input, never an existing file that is
    not a ptychoflow result, the folder writable), and again just before writing.
    Writes the result (HDF5, see ``recon.result``) and a PNG preview beside it (with the
    object's linear phase ramp removed unless ``preview_deramp`` is False), with the
    input's permission bits limited by the umask (:func:`result_mode`).
    ``memory_limit``: bytes the reconstruction may use (default ``recon.memory``'s).
    ``allowed_roots``: when given, the input and every file its HDF5 links reach must lie
    under them (:mod:`recon.hdf5_confined`); the compute function passes its roots, and
    ``ptychoflow recon`` those of ``PTYCHOFLOW_ALLOWED_ROOTS`` when set.
    ``beamline``: read ``input_path`` (a scan folder, or its diffraction file) through
    the Ptychodus readers these settings name (:mod:`recon.beamline`); None reads a CXI
    or npz file (:func:`recon.cxi.load_scan`).
    ``progress_folder``: while the solver runs, keep its progress (iteration, cost,
    elapsed and estimated remaining seconds) and an intermediate phase image there
    (:class:`recon.progress.ProgressFiles`, named after the result file; removed at the
    end): what the local backend and the portal show while a view computes.

    Returns a small JSON-ready summary: output and preview paths, iterations run, final
    cost, devices, backend and seconds per stage (load, solve, write), and with
    ``options.holdout_fraction`` the held-out patterns' count and the best iteration
    (whose object and probe were written; see ``recon.holdout``). Raises
    :class:`recon.errors.InputError` (naming the file and dataset) for bad input,
    :class:`recon.errors.OutputPathError` / :class:`recon.errors.OutputNotWritableError`
    for an output that is refused or cannot be written.
    """
    import numpy as np

    from recon.cxi import PLANCK_TIMES_LIGHT_SPEED, load_scan
    from recon.memory import check_memory, gpu_claim
    from recon.output_path import check_folder_writable, checked_output_path, result_mode
    from recon.result import write_result

    options = options or ReconOptions()
    output_path = checked_output_path(input_path, output_path)
    check_folder_writable(output_path.parent)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    roots = None if allowed_roots is None else [pathlib.Path(root) for root in allowed_roots]
    # The loaders' memory check, before the patterns are read, also checks the GPUs.
    with gpu_claim(gpu_claim_for(options, device_ids)):
        if beamline is not None:
            from recon.beamline import load_beamline_scan

            scan = load_beamline_scan(
                input_path, beamline, memory_limit=memory_limit, allowed_roots=roots
            )
        else:
            scan = load_scan(input_path, memory_limit=memory_limit, allowed_roots=roots)
    if options.probe_modes > 1:  # the loader checked for one mode; each more costs memory
        extent = np.ptp(scan.positions, axis=0)
        check_memory(
            str(input_path),
            scan.n_positions,
            scan.detector_shape,
            (float(extent[0]), float(extent[1])),
            limit=memory_limit,
            probe_modes=options.probe_modes,
            hint="; use fewer probe modes, or raise the limit (PTYCHOFLOW_MEMORY_LIMIT, or "
            "--memory-limit for ptychoflow recon)",
        )
    mode = result_mode(input_path)
    seconds["load"] = time.perf_counter() - start

    start = time.perf_counter()
    extra_attrs: dict = {"input": str(input_path)}
    if beamline is not None:
        extra_attrs["beamline"] = beamline.to_dict()
    files = None
    monitor = None
    if progress_folder is not None:
        from recon.progress import ProgressFiles

        files = ProgressFiles(progress_folder, output_path.stem, options.iterations)
        monitor = files.monitor
        progress = _chained(files.progress, progress)
    try:
        if options.holdout_fraction > 0:
            from recon.holdout import reconstruct_with_holdout

            result, report = reconstruct_with_holdout(
                scan, options, device_ids=device_ids, progress=progress, watch=monitor
            )
            extra_attrs["holdout"] = report.to_dict()
        else:
            result = reconstruct(
                scan, options, device_ids=device_ids, progress=progress, monitor=monitor
            )
    finally:
        if files is not None:
            files.close()
    iterations = len(result.cost) - 1
    seconds["solve"] = time.perf_counter() - start

    start = time.perf_counter()
    checked_output_path(input_path, output_path)  # again: minutes may have passed
    check_folder_writable(output_path.parent)
    per_iteration = sum(result.seconds_per_iteration) / max(len(result.seconds_per_iteration), 1)
    # Refined positions: the solver's own field when it has one, else the positions it
    # used when they differ from the reported ones.
    refined = getattr(result, "refined_positions", None)
    if refined is None and not np.array_equal(result.positions, scan.positions):
        refined = result.positions
    if getattr(result, "device_names", None):
        extra_attrs = {**extra_attrs, "device_names": list(result.device_names)}
    # What the defaults decided from the data (issue 18): the low-dose penalty's weight and
    # the sparse scan's chosen probe defocus.
    if getattr(result, "object_tv", 0.0):
        extra_attrs = {**extra_attrs, "object_tv_applied": float(result.object_tv)}
    # How far the final model is from explaining the counts to their shot noise (about 1:
    # it does; several: positions, probe or sample are wrong somewhere).
    fit_to_noise = getattr(result, "fit_to_noise", None)
    if fit_to_noise is not None:
        extra_attrs = {**extra_attrs, "fit_to_noise": float(fit_to_noise)}
    if getattr(result, "start_defocus_px", None) is not None:
        extra_attrs = {**extra_attrs, "start_defocus_px": float(result.start_defocus_px)}
    h5_path, png_path = write_result(
        output_path,
        object=result.object,
        probe=result.probe,
        cost=result.cost,
        positions=scan.positions,
        refined_positions=refined,
        energy_j=PLANCK_TIMES_LIGHT_SPEED / scan.wavelength if scan.wavelength else None,
        distance_m=scan.distance,
        options=options.to_dict(),
        pixel_size=scan.pixel_size,
        iterations=iterations,
        devices=result.devices,
        timings={**seconds, "per_iteration": per_iteration},
        backend=result.backend,
        extra_attrs=extra_attrs,
        preview_deramp=preview_deramp,
        mode=mode,
    )
    seconds["write"] = time.perf_counter() - start
    summary = {
        "output": str(h5_path),
        "preview": str(png_path),
        "iterations": iterations,
        "initial_cost": float(result.cost[0]),
        "final_cost": float(result.cost[-1]),
        "fit_to_noise": None if fit_to_noise is None else float(fit_to_noise),
        "devices": list(result.devices),
        "backend": result.backend,
        "device_names": list(getattr(result, "device_names", None) or []),
        "seconds": seconds,
        "seconds_per_iteration": per_iteration,
    }
    if "holdout" in extra_attrs:
        holdout = extra_attrs["holdout"]
        summary["holdout"] = {k: holdout[k] for k in ("patterns", "best_iteration")}
    return summary


def _chained(first: ProgressCallback, then: ProgressCallback | None) -> ProgressCallback:
    """A progress callback that calls ``first``, then ``then`` (when given)."""

    def both(iteration: int, cost: float, seconds: float) -> None:
        first(iteration, cost, seconds)
        if then is not None:
            then(iteration, cost, seconds)

    return both
