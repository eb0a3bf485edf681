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


def endpoint_identity(probe_dir: str | None = None, token: str | None = None) -> dict[str, Any]:
    """What ``ptychoflow check`` asks the Compute endpoint (a tiny task, no GPU).

    Returns the code identity plus ``allowed_roots`` (``PTYCHOFLOW_ALLOWED_ROOTS``
    split on ``os.pathsep``; empty when unset), ``host`` and ``python``. With
    ``probe_dir`` and ``token``, also ``probe``: :func:`probe_shared_folder`'s report.
    """
    import platform
    import socket

    raw = os.environ.get(ALLOWED_ROOTS_VARIABLE, "")
    answer: dict[str, Any] = {
        **code_identity(),
        "allowed_roots": [root for root in raw.split(os.pathsep) if root],
        "host": socket.gethostname(),
        "python": platform.python_version(),
    }
    if probe_dir is not None and token is not None:
        answer["probe"] = probe_shared_folder(probe_dir, token)
    return answer


def roots_cover(allowed_roots: list[str], path: str) -> bool:
    """True when ``path`` is one of ``allowed_roots`` or inside one (lexically, POSIX)."""
    target = os.path.normpath(path)
    for root in allowed_roots:
        normal = os.path.normpath(root)
        if target == normal or target.startswith(normal.rstrip("/") + "/"):
            return True
    return False


#: Name of the file ``ptychoflow check`` sends through Transfer for the workers to read.
PROBE_INPUT_NAME = "in.txt"
#: Name of the file the workers write for Transfer to bring back.
PROBE_OUTPUT_NAME = "out.txt"


def probe_shared_folder(folder: str, token: str) -> dict[str, Any]:
    """Does this worker see, read and write the folder that Transfer made? (no GPU)

    ``ptychoflow check`` made ``folder`` through Transfer and copied
    :data:`PROBE_INPUT_NAME` holding ``token`` into it, just as a run makes
    ``input/<id>`` and copies a view. This reads that file, writes
    :data:`PROBE_OUTPUT_NAME` (holding ``token``) as a result would be written, and
    reports who it ran as. Transfer then copies the output back: that proves the
    collection's account can read what the workers write. Never raises: a problem comes
    back in ``error``.
    """
    import pwd
    import stat

    umask = os.umask(0)
    os.umask(umask)
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    report: dict[str, Any] = {
        "folder": folder,
        "uid": uid,
        "user": user,
        "gid": os.getgid(),
        "umask": f"{umask:03o}",
        "read_input": False,
        "wrote_output": False,
        "error": None,
    }
    try:
        info = os.stat(folder)
        report["folder_uid"] = info.st_uid
        report["folder_mode"] = f"{stat.S_IMODE(info.st_mode):04o}"
        text = pathlib.Path(folder, PROBE_INPUT_NAME).read_text()
        if text.strip() != token:
            report["error"] = f"{PROBE_INPUT_NAME} in {folder} does not hold the token sent"
            return report
        report["read_input"] = True
        output = pathlib.Path(folder, PROBE_OUTPUT_NAME)
        output.write_text(token + "\n")
        report["wrote_output"] = True
        report["output_mode"] = f"{stat.S_IMODE(output.stat().st_mode):04o}"
    except OSError as err:
        report["error"] = f"{type(err).__name__}: {err}"
    return report


def worker_identity() -> dict[str, Any]:
    """Who and what ran a task on this worker, for ``ptychoflow check --sample-run``:
    ``uid``, ``user``, ``cuda_visible_devices`` (the GPU(s) the worker was given; None
    when unset), ``cupy_version``, ``cuda_driver_version`` and ``cuda_runtime_version``
    (None when CuPy or a driver is missing; ``cupy_error`` then says why)."""
    import pwd

    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    identity: dict[str, Any] = {
        "uid": uid,
        "user": user,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cupy_version": None,
        "cuda_driver_version": None,
        "cuda_runtime_version": None,
    }
    try:
        import cupy  # type: ignore[import-not-found, unused-ignore]

        identity["cupy_version"] = str(cupy.__version__)
        identity["cuda_driver_version"] = int(cupy.cuda.runtime.driverGetVersion())
        identity["cuda_runtime_version"] = int(cupy.cuda.runtime.runtimeGetVersion())
    except Exception as err:  # no CuPy, or no driver: said, not raised
        identity["cupy_error"] = f"{type(err).__name__}: {err}"
    return identity
