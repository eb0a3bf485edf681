"""The Transfer action, locally: a checksum-verified, atomic copy between two folders.

Each Globus collection of the flow input stands for a local folder
(``roots``: collection ID -> folder). Paths in the action's parameters are as
the collection sees them (``/scan100/view003.cxi`` is ``<root>/scan100/view003.cxi``),
and may not leave the collection's root.

A file is copied to ``<destination>.partial-<random>`` in the destination's
folder while its SHA-256 is computed, flushed to disk (``fsync``), read back and
verified, and only then renamed over the destination (``os.replace``, atomic on
one filesystem). A reader therefore never sees half a file under the
destination's name, and a failed or interrupted copy leaves the previous
destination (if any) untouched.

Permissions follow the source: a copy gets the source file's permission bits (``rwx``
for user, group and others; set-id and sticky bits are dropped), and a folder the
transfer creates gets its source folder's bits. The partial file is created 0600 and
given those bits just before the rename, so no copy is ever more open than its source
(a 0600 view stays 0600 on the compute side and its results stay 0600 when they come
back).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import stat
import uuid
from pathlib import Path
from typing import Any

from flows.local.errors import TransferPathError
from recon.errors import InputError, InputFileNotFound

#: Collection IDs the local backend puts into the flow input.
LOCAL_ACQUISITION_COLLECTION = "local-acquisition"
LOCAL_COMPUTE_COLLECTION = "local-compute"

CHUNK_BYTES = 4 * 1024 * 1024
PARTIAL_MARKER = ".partial-"
#: Most per-file entries listed in a result (the flow's state document has a size cap).
MAX_LISTED_FILES = 100


def transfer_action(params: dict[str, Any], roots: dict[str, Path]) -> dict[str, Any]:
    """Run one Transfer action; return the Transfer action provider's status document.

    ``params``: ``{"source_endpoint", "destination_endpoint", "DATA":
    [{"source_path", "destination_path", "recursive"}], "label" (optional)}``.

    On success ``status`` is ``SUCCEEDED`` and ``details`` holds ``files``,
    ``files_transferred``, ``bytes_transferred`` and, per copied file, its
    SHA-256. On a missing source, an unknown collection, a path outside the
    collection or a checksum mismatch ``status`` is ``FAILED`` and
    ``display_status`` names the path. Files copied before a failure stay.
    """
    start_time = _now_iso()
    task_id = str(uuid.uuid4())
    copied: list[dict[str, Any]] = []
    base = {
        "action_id": task_id,
        "label": params.get("label"),
        "start_time": start_time,
    }
    try:
        source_root = _root_of(roots, params.get("source_endpoint"), "source_endpoint")
        destination_root = _root_of(
            roots, params.get("destination_endpoint"), "destination_endpoint"
        )
        items = params.get("DATA")
        if not isinstance(items, list) or not items:
            raise InputError("transfer: DATA must be a non-empty list of items")
        for index, item in enumerate(items):
            _transfer_item(item, index, source_root, destination_root, copied)
    except (OSError, InputError) as err:
        return {
            **base,
            "status": "FAILED",
            "display_status": str(err),
            "details": {
                "task_id": task_id,
                "status": "FAILED",
                "description": str(err),
                **_totals(copied),
            },
            "completion_time": _now_iso(),
        }
    return {
        **base,
        "status": "SUCCEEDED",
        "display_status": "SUCCEEDED",
        "details": {
            "task_id": task_id,
            "status": "SUCCEEDED",
            "type": "TRANSFER",
            "verify_checksum": True,
            "checksum_algorithm": "SHA256",
            "source_endpoint_id": params["source_endpoint"],
            "destination_endpoint_id": params["destination_endpoint"],
            **_totals(copied),
        },
        "completion_time": _now_iso(),
    }


def _totals(copied: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "files": len(copied),
        "files_transferred": len(copied),
        "bytes_transferred": sum(entry["bytes"] for entry in copied),
        # Per-file entries, capped: a run's state document is limited (200 kB on Globus).
        "transferred": copied[:MAX_LISTED_FILES],
    }


def _root_of(roots: dict[str, Path], collection: Any, field: str) -> Path:
    if collection not in roots:
        known = ", ".join(sorted(roots)) or "none"
        raise InputError(f"transfer: {field} {collection!r} is not a local collection ({known})")
    return Path(roots[collection]).resolve()


def collection_path(root: Path, path: Any, field: str) -> Path:
    """The local path of a collection path; a path leaving ``root`` is a TransferPathError."""
    if not isinstance(path, str) or not path:
        raise TransferPathError(f"transfer: {field} must be a non-empty path, got {path!r}")
    relative = path.removeprefix("~").lstrip("/")
    local = (root / relative).resolve()
    if local != root and not local.is_relative_to(root):
        raise TransferPathError(
            f"transfer: {field} {path!r} leaves the collection root {root} (resolves to {local})"
        )
    return local


def _transfer_item(
    item: Any, index: int, source_root: Path, destination_root: Path, copied: list[dict[str, Any]]
) -> None:
    if not isinstance(item, dict):
        raise InputError(f"transfer: DATA[{index}] must be an object")
    source = collection_path(source_root, item.get("source_path"), f"DATA[{index}].source_path")
    destination = collection_path(
        destination_root, item.get("destination_path"), f"DATA[{index}].destination_path"
    )
    recursive = bool(item.get("recursive", False))
    if not source.exists():
        raise InputFileNotFound(
            f"transfer: source {item['source_path']!r} does not exist (looked at {source})"
        )
    if source.is_dir():
        if not recursive:
            raise TransferPathError(
                f"transfer: source {item['source_path']!r} is a folder; set recursive: true"
            )
        created = _make_folders(source, destination, sorted(p for p in source.rglob("*")))
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            if PARTIAL_MARKER in file.name:
                continue  # another copy in progress (or interrupted) into the source folder
            copied.append(copy_file_verified(file, destination / file.relative_to(source)))
        for source_folder, made in reversed(created):  # deepest last-made first
            os.chmod(made, _permission_bits(source_folder))
        return
    if recursive:
        raise TransferPathError(
            f"transfer: source {item['source_path']!r} is a file; recursive must be false"
        )
    copied.append(copy_file_verified(source, destination))


def _permission_bits(path: Path) -> int:
    """The ``rwx`` bits of ``path`` for user, group and others (no set-id, no sticky)."""
    return stat.S_IMODE(path.stat().st_mode) & 0o777


def _make_folders(source: Path, destination: Path, entries: list[Path]) -> list[tuple[Path, Path]]:
    """Create ``destination`` and the folders under it that mirror ``source``'s; return the
    (source folder, created folder) pairs, parents first. Their modes are set by the
    caller after the files are in (a read-only source folder would stop the copy)."""
    created: list[tuple[Path, Path]] = []
    for source_folder in [source, *(p for p in entries if p.is_dir() and not p.is_symlink())]:
        made = destination / source_folder.relative_to(source)
        if not made.exists():
            made.mkdir(parents=True)
            created.append((source_folder, made))
    return created


def copy_file_verified(source: Path, destination: Path) -> dict[str, Any]:
    """Copy one file atomically and verify its SHA-256; return ``{path, bytes, sha256}``.

    The copy gets the source's permission bits (see the module docstring). Raises
    :class:`OSError` on I/O errors and :class:`InputError` when the copy's checksum
    differs from the source's; in both cases no partial file remains.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.is_dir():
        raise TransferPathError(f"transfer: destination {destination} is a folder, not a file")
    partial = destination.with_name(f"{destination.name}{PARTIAL_MARKER}{secrets.token_hex(4)}")
    source_hash = hashlib.sha256()
    size = 0
    try:
        with open(source, "rb") as reader:
            private = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with open(private, "wb") as writer:
                while chunk := reader.read(CHUNK_BYTES):
                    source_hash.update(chunk)
                    writer.write(chunk)
                    size += len(chunk)
                writer.flush()
                source_bits = stat.S_IMODE(os.fstat(reader.fileno()).st_mode) & 0o777
                os.fchmod(writer.fileno(), source_bits)
                os.fsync(writer.fileno())
        copy_digest = sha256_of(partial)
        if copy_digest != source_hash.hexdigest():
            raise InputError(
                f"transfer: checksum mismatch copying {source} to {destination}: "
                f"source sha256 {source_hash.hexdigest()}, copy {copy_digest}"
            )
        os.replace(partial, destination)
    except OSError as err:
        partial.unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:
            # "[Errno 28] No space left on device" named no file: say which copy failed.
            raise type(err)(
                err.errno, f"{err.strerror} (copying {source} to {destination})", str(destination)
            ) from err
        raise
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync_folder(destination.parent)
    return {"path": str(destination), "bytes": size, "sha256": source_hash.hexdigest()}


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as reader:
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()
