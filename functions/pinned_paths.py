"""Folders opened once and used through their descriptors, so a later swap changes nothing.

:func:`functions.allowed_roots.confined` checks a path when it is given. The compute
function then runs for minutes, and whoever can write a parent folder could swap the
checked output folder (or the input) for a symbolic link to somewhere else: a check
of the name, repeated later, is a race. So each folder is opened once, with
``O_DIRECTORY | O_NOFOLLOW``, *before* the solve; the opened folder's real location is
checked against the roots (``/proc/self/fd/<fd>`` names what was opened, not what the
name points at now); and every later read or write goes through
``/proc/self/fd/<fd>/<name>``, which the kernel resolves to the folder that was opened,
whatever its name points at by then. That is ``dir_fd`` for code that takes paths
(h5py, Pillow, the ``recon`` writers), and it keeps an HDF5 file's relative external
links resolving beside it.

The input file is opened once too (``O_NOFOLLOW``, relative to its folder's
descriptor) and must be a regular file; after the reconstruction its name must still
be that same file (device and inode), or the result is removed and the view refused.

Linux only: ``/proc/self/fd`` is required, as on every endpoint we run on.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat

from functions.allowed_roots import confined
from recon.errors import InputError, InputFileNotFound, OutputNotWritableError

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def descriptor_path(fd: int, name: str | None = None) -> str:
    """``/proc/self/fd/<fd>[/<name>]``: a path the kernel resolves through ``fd``."""
    base = f"/proc/self/fd/{fd}"
    return base if name is None else f"{base}/{name}"


def opened_location(fd: int) -> pathlib.Path:
    """Where the folder or file behind ``fd`` really is (its name at open time)."""
    return pathlib.Path(os.readlink(descriptor_path(fd)))


class PinnedFolder:
    """A folder opened once; :meth:`path` names files in *that* folder from then on.

    ``folder`` must be the fully resolved path (:func:`confined`'s result). With
    ``create``, missing folders are made first (``0777`` less the umask). Raises
    :class:`~functions.allowed_roots.PathNotAllowedError` when what was opened is not
    under ``roots`` (it was swapped between the check and the open), and
    :class:`~recon.errors.OutputNotWritableError` when it cannot be opened as a folder.
    """

    def __init__(
        self, folder: pathlib.Path, what: str, roots: list[pathlib.Path], *, create: bool = False
    ):
        self.folder = folder
        self.what = what
        try:
            if create:
                os.makedirs(folder, exist_ok=True)
            self.fd = os.open(folder, _FOLDER_FLAGS)
        except FileExistsError as err:
            raise OutputNotWritableError(
                f"{folder}: cannot hold the result: a part of this path is a file, not a folder"
            ) from err
        except OSError as err:
            raise OutputNotWritableError(
                f"{folder}: cannot open the {what} ({err.strerror}); it must be a folder, "
                "not a link"
            ) from err
        try:
            confined(opened_location(self.fd), what, roots)
        except BaseException:
            os.close(self.fd)
            raise

    def path(self, name: str | None = None) -> str:
        """A path to ``name`` in the opened folder (the folder itself for None)."""
        if name is not None and ("/" in name or name in ("", ".", "..")):
            raise ValueError(f"{name!r} is not a plain file name")
        return descriptor_path(self.fd, name)

    def real(self, text: str) -> str:
        """``text`` with this folder's descriptor paths shown as the folder's real name."""
        return text.replace(descriptor_path(self.fd), str(self.folder))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> PinnedFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PinnedInput:
    """The input file, opened once without following a link, in its pinned folder.

    Read it through :attr:`path` (its folder's descriptor and its name, so an HDF5
    file's relative links still resolve beside it); :meth:`check_unchanged` then proves
    the name still is the file that was opened and checked.
    """

    def __init__(self, source: pathlib.Path, roots: list[pathlib.Path], label: str):
        self.label = label
        try:
            self.folder = PinnedFolder(source.parent, "input", roots)
        except OutputNotWritableError as err:
            if isinstance(err.__cause__, FileNotFoundError):
                raise InputFileNotFound(f"{label}: input file not found") from err
            raise InputError(f"{label}: cannot open the input's folder: {err}") from err
        self.name = source.name
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            self.fd = os.open(self.name, flags, dir_fd=self.folder.fd)
        except OSError as err:
            self.folder.close()
            if isinstance(err, FileNotFoundError):
                raise InputFileNotFound(f"{label}: input file not found") from err
            raise InputError(
                f"{label}: cannot open the input ({err.strerror}); it must be a regular "
                "file, not a link"
            ) from err
        self.stat = os.fstat(self.fd)
        if not stat.S_ISREG(self.stat.st_mode):
            self.close()
            raise InputError(f"{label}: the input is not a regular file")
        self.path = self.folder.path(self.name)

    def check_unchanged(self) -> None:
        """Raise :class:`~recon.errors.InputError` when the name now is another file."""
        try:
            now = os.stat(self.name, dir_fd=self.folder.fd, follow_symlinks=False)
        except OSError as err:
            raise InputError(
                f"{self.label}: the input vanished during the reconstruction ({err.strerror}); "
                "its result was not kept"
            ) from err
        if (now.st_dev, now.st_ino) != (self.stat.st_dev, self.stat.st_ino):
            raise InputError(
                f"{self.label}: the input was replaced during the reconstruction (by a link "
                "or another file); its result was not kept"
            )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.folder.close()
