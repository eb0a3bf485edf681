"""Which ptychoflow code is installed here: its version and a hash of its source files.

Globus Compute's default serializer ships ``reconstruct_view`` *by reference*:
the endpoint imports whatever ``functions`` and ``recon`` are installed on the
cluster. So the result summary carries :func:`code_identity`, and
``ptychoflow deploy`` / ``ptychoflow check`` compare the endpoint's answer with
the one computed on the deploying machine. The module imports only the
standard library, so it runs anywhere the package is installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
from typing import Any

#: Packages whose source decides what a reconstruction does.
HASHED_PACKAGES = ("functions", "recon")

#: Separator of the roots listed in ``PTYCHOFLOW_ALLOWED_ROOTS`` (as in ``PATH``).
ALLOWED_ROOTS_VARIABLE = "PTYCHOFLOW_ALLOWED_ROOTS"


def package_version() -> str:
    """The installed ptychoflow distribution's version, ``unknown`` when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ptychoflow")
    except PackageNotFoundError:
        return "unknown"


def code_hash(packages: tuple[str, ...] = HASHED_PACKAGES) -> str:
    """``sha256:<hex>`` over every ``*.py`` file of ``packages``, by relative path.

    The path (``recon/solver.py``) and the bytes of each file go into the hash
    in sorted path order, so the same source gives the same hash on any machine
    whatever the install location; ``__pycache__`` is not read.
    """
    digest = hashlib.sha256()
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            digest.update(f"{package}: not installed\n".encode())
            continue
        root = pathlib.Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            relative = f"{package}/{path.relative_to(root).as_posix()}"
            content = path.read_bytes()
            digest.update(f"{relative}\0{len(content)}\0".encode())
            digest.update(content)
    return "sha256:" + digest.hexdigest()


def code_identity() -> dict[str, str]:
    """``{"ptychoflow_version": ..., "code_hash": ...}`` of the code installed here."""
    return {"ptychoflow_version": package_version(), "code_hash": code_hash()}


def endpoint_identity() -> dict[str, Any]:
    """What ``ptychoflow check`` asks the Compute endpoint (a tiny task, no GPU).

    Returns the code identity plus ``allowed_roots`` (``PTYCHOFLOW_ALLOWED_ROOTS``
    split on ``os.pathsep``; empty when unset), ``host`` and ``python``.
    """
    import platform
    import socket

    raw = os.environ.get(ALLOWED_ROOTS_VARIABLE, "")
    return {
        **code_identity(),
        "allowed_roots": [root for root in raw.split(os.pathsep) if root],
        "host": socket.gethostname(),
        "python": platform.python_version(),
    }


def roots_cover(allowed_roots: list[str], path: str) -> bool:
    """True when ``path`` is one of ``allowed_roots`` or inside one (lexically, POSIX)."""
    target = os.path.normpath(path)
    for root in allowed_roots:
        normal = os.path.normpath(root)
        if target == normal or target.startswith(normal.rstrip("/") + "/"):
            return True
    return False
