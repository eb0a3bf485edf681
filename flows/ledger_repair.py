"""``ptychoflow ledger check`` and ``ledger rebuild``: what to do with a damaged or lost ledger.

The result files are the evidence of finished work: each
``<acquisition root>/recon/<scan_dir>/<view>.h5`` records the options it was
made with. ``rebuild`` moves the old ledger aside (never deletes it) and writes
a new one with a ``succeeded`` row per result, so nothing finished runs again
and everything without a result runs the next time its scan is seen.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import sqlite3
import struct
from typing import Any

from flows.backend import Trigger, ViewRequest
from flows.config import Config
from flows.errors import LedgerError
from flows.ledger import SCHEMA_VERSION, Ledger, ScanState, command_of, schema_problems
from flows.scans import ScanFolder, scan_folders, view_files
from recon.errors import InputError


def check_ledger(path: pathlib.Path) -> list[str]:
    """What is wrong with the ledger file at ``path`` (empty when nothing is): missing,
    empty, ``PRAGMA integrity_check`` findings, schema version and columns."""
    if not path.exists():
        return ["does not exist"]
    if path.stat().st_size == 0 and not pathlib.Path(f"{path}-wal").exists():
        return ["is empty (0 bytes): its history is lost"]
    problems = _check_open(path, immutable=False)
    cannot_open = problems and all("unable to open" in p or "readonly" in p for p in problems)
    if cannot_open and (_read_only_file_system(path) or not os.access(path.parent, os.W_OK)):
        # A read-only file system (or folder): SQLite cannot make the -shm file a WAL
        # reader needs, which says nothing about the ledger. Nobody can write it there,
        # so it is read as immutable, without locks (issue 16).
        problems = _check_open(path, immutable=True)
    return problems


def _read_only_file_system(path: pathlib.Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _check_open(path: pathlib.Path, *, immutable: bool) -> list[str]:
    problems: list[str] = []
    uri = f"file:{path}?mode=ro" + ("&immutable=1" if immutable else "")
    try:
        db = sqlite3.connect(uri, uri=True, timeout=5)
    except sqlite3.Error as err:
        return [f"cannot be opened: {err}"]
    try:
        findings = [row[0] for row in db.execute("PRAGMA integrity_check(20)")]
        if findings != ["ok"]:
            problems += [f"integrity check: {finding}" for finding in findings]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (1, 2, SCHEMA_VERSION):
            problems.append(
                f"schema version {version}; this ptychoflow reads {SCHEMA_VERSION} (and "
                "migrates 1 and 2)"
            )
        elif version == SCHEMA_VERSION:
            problems += schema_problems(db)
    except sqlite3.Error as err:
        problems.append(f"unreadable: {err}")
    finally:
        db.close()
    return problems


def move_aside(path: pathlib.Path) -> pathlib.Path | None:
    """Rename the ledger (and its ``-wal``/``-shm`` files) to ``<name>.damaged-<time>``;
    returns the new path of the main file (None when there was none)."""
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    moved = None
    for suffix in ("", "-wal", "-shm"):
        source = pathlib.Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{target}{suffix}")
            if not suffix:
                moved = target
    return moved


def _result_summary(path: pathlib.Path) -> dict[str, Any] | None:
    """The options and numbers a result file records, or None if it is not a readable
    ptychoflow result (e.g. cut short)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if "object" not in handle or "cost" not in handle:
                return None
            attrs = {name: handle.attrs[name] for name in handle.attrs}
    except OSError:
        return None

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    try:
        options = json.loads(text(attrs.get("options", "{}")))
    except json.JSONDecodeError:
        options = {}
    return {
        "options": options if isinstance(options, dict) else {},
        "iterations": int(attrs.get("iterations", 0)),
        "created": text(attrs.get("created", "")),
        "result": str(path),
    }


def _folders_by_result_dir(
    config: Config, result_dirs: list[str]
) -> tuple[dict[str, ScanFolder], list[str]]:
    """Which scan folder each ``recon/<dir>`` belongs to: the folder of that name, or for
    a number the folder with that id (of several, the one without its own named dir)."""
    folders, _ = scan_folders(config)
    by_name = {folder.name: folder for folder in folders}
    owners: dict[str, ScanFolder] = {}
    notes: list[str] = []
    for name in result_dirs:
        if name in by_name:
            owners[name] = by_name[name]
    claimed = {folder.name for folder in owners.values()}
    for name in result_dirs:
        if name in owners or not name.isdigit():
            continue
        candidates = [f for f in folders if f.scan_id == int(name) and f.name not in claimed]
        if not candidates:
            notes.append(f"recon/{name}/: no scan folder with id {name} any more; skipped")
            continue
        if len(candidates) > 1:
            notes.append(
                f"recon/{name}/: folders {', '.join(f.name for f in candidates)} share id "
                f"{name}; taken as {candidates[0].name}'s"
            )
        owners[name] = candidates[0]
        claimed.add(candidates[0].name)
    for name in result_dirs:
        if name not in owners and not name.isdigit():
            notes.append(f"recon/{name}/: not a scan folder name; skipped")
    return owners, notes


def ledger_holders(path: pathlib.Path) -> list[tuple[int, str]]:
    """Other processes that have the ledger (or its ``-wal``/``-shm``) open: (pid, command).

    Found two ways: open descriptors in ``/proc/<pid>/fd`` (every process of this user,
    every process for root), and the shared lock every SQLite connection in WAL mode
    holds on the ``-shm`` file (``fcntl(F_GETLK)``; seen across users on this host).
    """
    names = {os.path.realpath(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")}
    me = os.getpid()
    found: dict[int, str] = {}
    try:
        pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        if pid == me:
            continue
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for entry in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{entry}")
            except OSError:
                continue
            if target in names:
                found[pid] = command_of(pid)
                break
    shm = f"{path}-shm"
    fd: int | None
    try:
        fd = os.open(shm, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        fd = None
    if fd is not None:
        try:
            # SQLite's WAL locks and the DMS byte: bytes 120..128 of the -shm file.
            request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 120, 9, 0)
            lock_type, _, _, _, pid = struct.unpack(
                "hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, request)
            )
            if lock_type != fcntl.F_UNLCK and pid > 0 and pid != me:
                found.setdefault(pid, command_of(pid))
        except OSError:
            pass
        finally:
            os.close(fd)
    return sorted(found.items())


def rebuild_ledger(config: Config) -> list[str]:
    """Move ``config.ledger`` aside and write a new one from the results under
    ``<acquisition root>/recon/``; returns what it did, one line each.

    Refused (:class:`~flows.errors.LedgerError`) while another process holds the ledger
    (:func:`ledger_holders`): the watcher would keep writing the renamed file, and the
    portal would keep reading it, so the next scan would run twice."""
    holders = ledger_holders(config.ledger)
    if holders:
        listed = "; ".join(f"pid {pid} ({command})" for pid, command in holders)
        raise LedgerError(
            f"ledger {config.ledger} is in use by {listed}. Stop those first (e.g. "
            "`systemctl stop ptychoflow-watch ptychoflow-portal`, or `kill <pid>`), then "
            "run `ptychoflow ledger rebuild` again; start them after it"
        )
    results_root = config.acquisition_root / "recon"
    result_dirs = (
        sorted(p.name for p in results_root.iterdir() if p.is_dir())
        if results_root.is_dir()
        else []
    )
    owners, report = _folders_by_result_dir(config, result_dirs)
    moved = move_aside(config.ledger)
    if moved is not None:
        report.insert(0, f"moved the old ledger to {moved}")
    ledger = Ledger(config.ledger)
    adopted = 0
    try:
        # Folder-named result dirs first, so numeric ones never take their names.
        for result_dir in sorted(owners, key=lambda name: name.isdigit()):
            folder = owners[result_dir]
            ledger.scan_seen(folder.name, folder.scan_id, scan_dir=result_dir)
            try:
                files = view_files(config, folder.path)
            except InputError:
                files = []
            by_stem = {pathlib.PurePosixPath(name).stem: name for name in files}
            done = set()
            for result in sorted((results_root / result_dir).glob("*.h5")):
                view_file = by_stem.get(result.stem)
                summary = _result_summary(result)
                if view_file is None or summary is None:
                    why = "no view file of that name" if view_file is None else "unreadable"
                    report.append(f"{result}: {why}; not adopted")
                    continue
                request = ViewRequest(
                    scan_id=folder.scan_id,
                    view_file=view_file,
                    scan_folder=folder.name,
                    recon=summary.pop("options"),
                    trigger=Trigger.MANUAL,
                    scan_dir=result_dir,
                )
                ledger.record_result(request, "rebuilt", result.stat().st_mtime, summary)
                done.add(view_file)
                adopted += 1
            if files and done >= set(files):
                ledger.scan_submitted(folder.name)
            report.append(
                f"{folder.name}: {len(done)} of {len(files)} view(s) have results in "
                f"recon/{result_dir}/"
                + ("" if done >= set(files) else "; the others run when the scan is next seen")
            )
        state = ScanState.SUBMITTED.value
        report.append(
            f"rebuilt {config.ledger}: {adopted} result(s) recorded as succeeded "
            f"({sum(1 for s in ledger.scans() if s.status.value == state)} scan(s) complete)"
        )
    finally:
        ledger.close()
    return report
