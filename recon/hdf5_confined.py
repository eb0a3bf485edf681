"""Open HDF5 files so that nothing outside the allowed roots is read through them.

A path check on the file we are given is not enough: an HDF5 file names other files
itself, and h5py follows what it says.

- An **external link** (``/entry/data/data_000001 -> data_000001.h5:/entry/data/data``,
  what an Eiger master file holds) makes HDF5 open another file: the path as written when
  it is absolute, else relative to the folder of the file that holds the link (and, when
  that fails, relative to the process's working directory).
- A **virtual dataset** (VDS) maps parts of other files' datasets, found the same way.
  A missing source reads as fill values, silently.
- **External raw storage** makes a dataset's bytes those of any file, any format, found
  relative to the reading process's working directory.

The decision (README, "Operations"): before any byte is read, every file a view can
reach is scanned (:func:`reachable_files`): every link in it (``H5Lvisit``, which does not
follow soft or external links itself), every dataset's creation properties. Then

- an external link or a VDS source must resolve, by HDF5's own first rule (absolute as
  written, else beside the file that holds it), inside the allowed roots, and must exist
  there as an HDF5 file, which is then scanned in turn. A beamline's master file linking
  to the data files beside it works; a link to ``/`` elsewhere or ``../../..`` out of
  the roots is refused, naming the file, the dataset and the target. Requiring the
  target to exist where we resolved it means HDF5's fallbacks (the basename beside the
  file, the working directory) are never reached;
- external raw storage is refused outright, inside the roots or not: HDF5 finds those
  files relative to the reader's working directory, so what the data mean would depend
  on where the reader runs, and no detector or Ptychodus writer uses it;
- ``HDF5_EXT_PREFIX``, ``HDF5_VDS_PREFIX`` and ``HDF5_EXTFILE_PREFIX`` set in the
  environment are refused, since they change where HDF5 looks first;
- a link type HDF5 plugins define (user-defined links), a VDS source named with a
  printf pattern (``%b``), more than :data:`MAX_FILES` files or :data:`MAX_LINKS` links
  are refused.

``roots=None`` means no confinement (``ptychoflow recon`` without
``PTYCHOFLOW_ALLOWED_ROOTS``): files are opened as h5py would. ``roots=()`` means that a
file must be self-contained (result files: we never write a link).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import h5py

from recon.errors import InputError, InputFileNotFound

#: Environment variable naming the allowed roots (shared with ``functions.allowed_roots``).
ALLOWED_ROOTS_ENV = "PTYCHOFLOW_ALLOWED_ROOTS"

#: Environment variables that change where HDF5 looks for linked files.
HDF5_PREFIX_VARIABLES = ("HDF5_EXT_PREFIX", "HDF5_VDS_PREFIX", "HDF5_EXTFILE_PREFIX")

#: Most files one view may reach through links (an Eiger scan: a master and ~100 data files).
MAX_FILES = 4096
#: Most links scanned over all those files.
MAX_LINKS = 1_000_000

Roots = Sequence[pathlib.Path] | None


class ExternalReferenceRefused(InputError):
    """An HDF5 file refers to data outside the allowed roots, or in a way we refuse."""


def roots_from_environment() -> tuple[pathlib.Path, ...] | None:
    """The resolved roots from ``PTYCHOFLOW_ALLOWED_ROOTS``, or None when it is unset or
    empty (no confinement). A relative root is an :class:`InputError`."""
    text = os.environ.get(ALLOWED_ROOTS_ENV, "")
    entries = [entry for entry in text.split(os.pathsep) if entry.strip()]
    if not entries:
        return None
    for entry in entries:
        if not os.path.isabs(entry):
            raise InputError(
                f"{ALLOWED_ROOTS_ENV} holds the relative path {entry!r}; every root must be "
                "an absolute path"
            )
    return tuple(pathlib.Path(os.path.realpath(entry)) for entry in entries)


def inside(path: str | os.PathLike[str], roots: Sequence[pathlib.Path]) -> bool:
    """Whether ``path``, every symbolic link followed, lies in one of ``roots``."""
    resolved = pathlib.Path(os.path.realpath(os.fspath(path)))
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


def confine_path(path: str | os.PathLike[str], roots: Roots, what: str = "input") -> None:
    """Refuse ``path`` when ``roots`` is given and it resolves outside them (the message
    is the same whether or not it exists)."""
    if roots is None or inside(path, roots):
        return
    raise ExternalReferenceRefused(
        f"{what} {os.fspath(path)!r} is not under the allowed roots ({_listed(roots)}; "
        f"{ALLOWED_ROOTS_ENV})"
    )


def reachable_files(path: str | os.PathLike[str], roots: Roots = None) -> list[pathlib.Path]:
    """Every HDF5 file reading ``path`` can open: the file itself first, then the targets
    of its external links and VDS sources, recursively (absolute, not resolved: the
    names a transfer must copy). With ``roots`` (see the module docstring) each is
    checked first; refusals are :class:`ExternalReferenceRefused` naming the file, the
    dataset and the target."""
    start = pathlib.Path(os.path.abspath(os.fspath(path)))
    if roots:  # () is "self-contained": only the file itself, wherever it is
        confine_path(start, roots)
        for variable in HDF5_PREFIX_VARIABLES:
            if os.environ.get(variable):
                raise ExternalReferenceRefused(
                    f"{start}: {variable} is set in this environment; it changes where "
                    "HDF5 looks for linked files, so links cannot be checked against the "
                    f"allowed roots: unset it ({variable}={os.environ[variable]!r})"
                )
    seen: dict[str, pathlib.Path] = {}
    queue = [start]
    links = 0
    while queue:
        current = queue.pop(0)
        key = os.path.realpath(current)
        if key in seen:
            continue
        if len(seen) >= MAX_FILES:
            raise ExternalReferenceRefused(
                f"{start}: links reach more than {MAX_FILES} HDF5 files; refused"
            )
        seen[key] = current
        targets, count = _scan_file(current, roots, start, links)
        links += count
        queue.extend(targets)
    return list(seen.values())


def check_hdf5(path: str | os.PathLike[str], roots: Roots) -> None:
    """Refuse ``path`` when anything it links to lies outside ``roots`` (no-op for None)."""
    if roots is not None:
        reachable_files(path, roots)


@contextlib.contextmanager
def open_hdf5(path: str | os.PathLike[str], roots: Roots = None) -> Iterator[h5py.File]:
    """``h5py.File(path, "r")`` after :func:`check_hdf5`; an unreadable file is an
    :class:`InputError` naming it."""
    check_hdf5(path, roots)
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise InputError(
            f"{path}: not a readable HDF5 file (truncated or another format): {err}"
        ) from err
    with handle:
        yield handle


# --------------------------------------------------------------------------- scanning


def _scan_file(
    path: pathlib.Path, roots: Roots, start: pathlib.Path, links_so_far: int
) -> tuple[list[pathlib.Path], int]:
    """The files ``path`` refers to, each checked; and how many links it holds."""
    try:
        handle = h5py.File(path, "r")
    except FileNotFoundError as err:
        raise InputFileNotFound(f"{path}: no such file") from err
    except OSError as err:
        raise InputError(
            f"{path}: not a readable HDF5 file (truncated or another format): {err}"
        ) from err
    folder = path.parent
    targets: list[pathlib.Path] = []
    names: list[tuple[bytes, int]] = []

    def collect(name: bytes, info: Any) -> None:
        names.append((name, int(info.type)))  # h5py reuses one info object: copy the type
        if links_so_far + len(names) > MAX_LINKS:
            raise ExternalReferenceRefused(f"{start}: more than {MAX_LINKS} HDF5 links; refused")

    with handle:
        try:
            handle.id.links.visit(collect, info=True)
        except (KeyError, RuntimeError, OSError) as err:
            raise InputError(f"{path}: its links cannot be listed ({err})") from err
        for raw_name, link_type in names:
            where = "/" + raw_name.decode("utf-8", "backslashreplace")
            if link_type == h5py.h5l.TYPE_SOFT:
                continue  # within this file: whatever it reaches is scanned here
            if link_type == h5py.h5l.TYPE_EXTERNAL:
                file_name, _ = handle.id.links.get_val(raw_name)
                target = _resolve(path, folder, where, "an external link to", file_name, roots)
                if target is not None:
                    targets.append(target)
                continue
            if link_type != h5py.h5l.TYPE_HARD:
                raise ExternalReferenceRefused(
                    f"{path}: {where} is a user-defined HDF5 link (type {link_type}); refused"
                )
            targets.extend(_dataset_references(handle, path, folder, raw_name, roots))
    return targets, len(names)


def _dataset_references(
    handle: h5py.File, path: pathlib.Path, folder: pathlib.Path, name: bytes, roots: Roots
) -> list[pathlib.Path]:
    """The VDS source files of the object at ``name`` (a dataset reached by hard links
    only); external raw storage is refused."""
    where = "/" + name.decode("utf-8", "backslashreplace")
    try:
        object_id = h5py.h5o.open(handle.id, name)
    except (KeyError, RuntimeError, OSError) as err:
        raise InputError(f"{path}: {where} cannot be opened ({err})") from err
    if not isinstance(object_id, h5py.h5d.DatasetID):
        return []
    plist = object_id.get_create_plist()
    external = plist.get_external_count()
    if external:
        target = plist.get_external(0)[0].decode("utf-8", "backslashreplace")
        raise ExternalReferenceRefused(
            f"{path}: {where} keeps its data in external raw storage ({target!r}"
            f"{f' and {external - 1} more' if external > 1 else ''}); refused: HDF5 reads "
            "such files relative to the reader's working directory, so they cannot be "
            "confined (copy the data into the file, e.g. with h5repack)"
        )
    if plist.get_layout() != h5py.h5d.VIRTUAL:
        return []
    targets = []
    for index in range(plist.get_virtual_count()):
        file_name = plist.get_virtual_filename(index)
        if file_name == ".":
            continue  # this very file
        if "%" in file_name:
            raise ExternalReferenceRefused(
                f"{path}: {where} is a virtual dataset whose source file is a pattern "
                f"({file_name!r}); refused: it cannot be checked against the allowed roots"
            )
        target = _resolve(path, folder, where, "a virtual dataset on", file_name, roots)
        if target is not None:
            targets.append(target)
    return targets


def _resolve(
    path: pathlib.Path,
    folder: pathlib.Path,
    where: str,
    kind: str,
    file_name: str | bytes,
    roots: Roots,
) -> pathlib.Path | None:
    """The file HDF5 opens first for ``file_name`` (absolute as written, else beside the
    file holding the reference); refused outside ``roots`` or when it is not there (so
    HDF5 never falls back to other places). None without roots when it is missing."""
    if isinstance(file_name, bytes):
        file_name = file_name.decode("utf-8", "backslashreplace")
    target = pathlib.Path(os.path.abspath(folder / file_name))  # absolute stays as it is
    if roots is not None and not inside(target, roots):
        raise ExternalReferenceRefused(
            f"{path}: {where} is {kind} {file_name!r} ({target}), outside the allowed "
            f"roots ({_listed(roots)}); refused"
        )
    if not target.is_file():
        if roots is None:
            return None
        raise ExternalReferenceRefused(
            f"{path}: {where} is {kind} {file_name!r}, but {target} is not a file; refused "
            "(HDF5 would look for it elsewhere)"
        )
    return target


def _listed(roots: Sequence[pathlib.Path]) -> str:
    return os.pathsep.join(str(root) for root in roots) or "none: the file must be self-contained"
