"""Where a result may be written: never over the input, never over a file that is not ours.

``ptychoflow recon v.cxi -o v.cxi`` once replaced the raw data with the result. The rules
:func:`checked_output_path` enforces, for ``ptychoflow recon`` and the compute function:

- ``-o`` is a result file name ending in ``.h5`` or ``.hdf5``, or a folder (an existing
  one, or a name ending in ``/``): then the result is ``<folder>/<input stem>.h5``.
- The result file and its preview (``<stem>.png``) must not be the input: compared after
  resolving symbolic links and ``..``, and by device and inode (hard links).
- An existing file at the result path is replaced only when it is a ptychoflow result
  (an HDF5 file with the ``ptychoflow_version`` attribute :mod:`recon.result` writes);
  an existing preview only when the result beside it is one.
- The folder must be writable: a probe file is created and removed before the solve
  starts, so a read-only folder does not cost a whole reconstruction.

Result files get the input's permission bits restricted by the umask (each bit must be
allowed by both, :func:`result_mode`): a 0600 view gives 0600 results, a 0644 view 0644.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat
import tempfile

from recon.errors import OutputNotWritableError, OutputPathError

#: Names a result file may end with.
RESULT_SUFFIXES = (".h5", ".hdf5")
#: Input suffixes removed to make ``<input stem>.h5`` (longest first).
INPUT_SUFFIXES = (".npz.bz2", ".npz", ".cxi", ".hdf5", ".h5")
#: The attribute every result file carries (written by ``recon.result.write_result``).
RESULT_MARKER_ATTRIBUTE = "ptychoflow_version"


def input_stem(input_path: str | os.PathLike[str]) -> str:
    """``scan100/view003.cxi`` -> ``view003``; ``star.npz.bz2`` -> ``star``."""
    name = pathlib.Path(input_path).name
    for suffix in INPUT_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return pathlib.Path(name).stem


def result_file_for(
    input_path: str | os.PathLike[str], output: str | os.PathLike[str]
) -> pathlib.Path:
    """The result file ``output`` names: itself, or ``<output>/<input stem>.h5`` for a folder."""
    text = os.fspath(output)
    path = pathlib.Path(text)
    if text.endswith(os.sep) or path.is_dir():
        return path / f"{input_stem(input_path)}.h5"
    if not path.name.lower().endswith(RESULT_SUFFIXES):
        raise OutputPathError(
            f"{path}: a result file name must end with .h5 or .hdf5 (or name a folder, "
            f"ending with '/' to create it; the result is then <folder>/"
            f"{input_stem(input_path)}.h5)"
        )
    return path


def is_ptychoflow_result(path: pathlib.Path) -> bool:
    """Whether ``path`` is a regular file holding a ptychoflow result (never opens FIFOs)."""
    import h5py

    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return False
        with h5py.File(path, "r") as handle:
            return RESULT_MARKER_ATTRIBUTE in handle.attrs and "object" in handle
    except (OSError, RuntimeError, ValueError, KeyError):  # not HDF5, damaged, unreadable
        return False


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Same path after resolving links and ``..``, or the same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def checked_output_path(
    input_path: str | os.PathLike[str], output: str | os.PathLike[str]
) -> pathlib.Path:
    """The result file for ``output`` after the checks in the module docstring (all but
    the write probe, see :func:`check_folder_writable`). Raises :class:`OutputPathError`."""
    source = pathlib.Path(input_path)
    result = result_file_for(source, output)
    preview = result.with_suffix(".png")
    for path, what in ((result, "the result file"), (preview, "the preview")):
        if _same_file(path, source):
            raise OutputPathError(
                f"{path}: {what} would overwrite the input {source}; choose another -o "
                "(a file name ending in .h5, or a folder)"
            )
    if os.path.lexists(result):
        if result.is_dir():
            raise OutputPathError(f"{result}: is a folder; choose another result file name")
        if not is_ptychoflow_result(result):
            raise OutputPathError(
                f"{result}: exists and is not a ptychoflow result file; refusing to replace "
                "it. Move it away or choose another -o"
            )
    if os.path.lexists(preview) and not (
        preview.is_file() and not preview.is_symlink() and is_ptychoflow_result(result)
    ):
        raise OutputPathError(
            f"{preview}: exists and is not the preview of a ptychoflow result; refusing to "
            "replace it. Move it away or choose another -o"
        )
    return result


def check_folder_writable(folder: pathlib.Path) -> None:
    """Create ``folder`` when missing, then create and remove a probe file in it.

    Raises :class:`OutputNotWritableError` naming the folder and the reason."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise OutputNotWritableError(
            f"{folder}: cannot hold the result: a part of this path is a file, not a folder"
        ) from err
    except OSError as err:
        raise OutputNotWritableError(
            f"{folder}: cannot create the output folder ({err.strerror}); choose another "
            "output or fix the permissions"
        ) from err
    try:
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".ptychoflow-probe-", suffix=".tmp")
    except OSError as err:
        raise OutputNotWritableError(
            f"{folder}: cannot write the result here ({err.strerror}); choose another output "
            "folder or make this one writable (checked before reconstructing)"
        ) from err
    os.close(descriptor)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(probe)


def current_umask() -> int:
    """This process's umask, read without changing it where ``/proc`` tells it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: the classic read-and-restore
    os.umask(mask)
    return mask


def result_mode(input_path: str | os.PathLike[str]) -> int:
    """Permission bits for result files: the input's read/write bits that the umask also
    allows (never more permissive than either; execute and special bits are dropped)."""
    input_bits = stat.S_IMODE(os.stat(input_path).st_mode) & 0o666
    return input_bits & (0o666 & ~current_umask())
