"""Where the compute function may read and write: the endpoint's allowed roots.

Anyone who can start a run chooses the paths the compute function receives. Without a
fence it would read any HDF5 file the endpoint's account can read, create folders
anywhere and replace files. ``PTYCHOFLOW_ALLOWED_ROOTS`` names the folders it may use,
separated by ``os.pathsep`` (``:``), e.g. ``/eagle/APS/ptychoflow:/grand/APS/ptychoflow``:

- each root is resolved (symbolic links, ``..``) when read; a relative root is refused;
- a path is allowed when its fully resolved form (every symbolic link followed, ``..``
  removed) lies in one root, so a link inside a root that points outside is refused;
- the variable unset or empty refuses everything, with a message saying where to set it;
- a refused path gets the same message whether or not it exists: the message shows the
  path as given and the roots, never the resolved target.

Where it is set: on an endpoint, in the worker environment of
``user_config_template.yaml.j2`` (``worker_init: export PTYCHOFLOW_ALLOWED_ROOTS=...``,
or the engine's environment); for the local backend, its compute root.
"""

from __future__ import annotations

import os
import pathlib

from recon.errors import PtychoflowError

#: Environment variable naming the allowed roots.
ALLOWED_ROOTS_ENV = "PTYCHOFLOW_ALLOWED_ROOTS"


class AllowedRootsNotSetError(PtychoflowError, PermissionError):
    """``PTYCHOFLOW_ALLOWED_ROOTS`` is unset, empty or holds a relative path."""


class PathNotAllowedError(PtychoflowError, PermissionError):
    """A path resolves outside every allowed root."""


def allowed_roots() -> list[pathlib.Path]:
    """The resolved roots from ``PTYCHOFLOW_ALLOWED_ROOTS``; refuses when unset."""
    text = os.environ.get(ALLOWED_ROOTS_ENV, "")
    entries = [entry for entry in text.split(os.pathsep) if entry.strip()]
    if not entries:
        raise AllowedRootsNotSetError(
            f"{ALLOWED_ROOTS_ENV} is not set on this endpoint, so the compute function "
            "refuses to read or write anything. Set it to the folders views and results "
            f"live in, separated by '{os.pathsep}' (e.g. /eagle/PROJECT/ptychoflow): in the "
            "worker environment of the endpoint's user_config_template.yaml.j2 "
            f"(worker_init: export {ALLOWED_ROOTS_ENV}=...), or in the environment of the "
            "process that starts the local backend"
        )
    roots = []
    for entry in entries:
        if not os.path.isabs(entry):
            raise AllowedRootsNotSetError(
                f"{ALLOWED_ROOTS_ENV} holds the relative path {entry!r}; every root must be "
                "an absolute path"
            )
        roots.append(pathlib.Path(os.path.realpath(entry)))
    return roots


def confined(path: str | os.PathLike[str], what: str, roots: list[pathlib.Path]) -> pathlib.Path:
    """``path`` fully resolved, when that lies in one of ``roots``.

    ``what`` names the path in the message (``input``, ``output folder``). Raises
    :class:`PathNotAllowedError` with a message that does not depend on whether the
    path exists or where a link in it points.
    """
    resolved = pathlib.Path(os.path.realpath(os.fspath(path)))
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    listed = os.pathsep.join(str(root) for root in roots)
    raise PathNotAllowedError(
        f"{what} {os.fspath(path)!r} is not under the endpoint's allowed roots ({listed}); "
        f"the compute function only reads and writes there ({ALLOWED_ROOTS_ENV})"
    )
