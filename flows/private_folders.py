"""Folders only this account may write: the state folder and the folders inside it.

A ``state_dir`` that is a shared folder (``/tmp``, a group's project folder) was once
chmodded 0700, taking away its sticky bit and other users' access. Now (issue 16):

- a folder this call creates is made 0700 (exactly, whatever the umask);
- a folder that exists is never chmodded: it must be a real folder (not a link) owned
  by this account and not writable by its group or others, else a
  :class:`~flows.errors.ConfigError` names it and says what to do.
"""

from __future__ import annotations

import os
import pathlib
import stat

from flows.errors import ConfigError


def ensure_private_dir(directory: pathlib.Path | str, what: str = "state_dir") -> pathlib.Path:
    """``directory``, created 0700 when missing, else checked as described above."""
    directory = pathlib.Path(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise ConfigError(f"{what} {directory}: cannot create it ({err.strerror})") from err
    else:
        os.chmod(directory, 0o700)  # ours, just made: exactly 0700 whatever the umask
        return directory
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{what} {directory}: not a folder (a link or a file); choose another")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"{what} {directory}: belongs to uid {info.st_uid}, not to this account; choose "
            "a folder of your own (it holds tokens and engine records)"
        )
    if info.st_mode & 0o022:
        raise ConfigError(
            f"{what} {directory}: other users can write it (mode "
            f"{stat.S_IMODE(info.st_mode):04o}), so they could replace tokens or records in "
            "it; choose a folder of your own, e.g. a new subfolder (it is created 0700). A "
            "shared folder is never chmodded"
        )
    return directory
