"""The run ledger: one SQLite file per installation, one row per (scan, view).

Both ``run-flow`` and the watcher write it; ``status`` reads it. It is what
makes triggering exactly-once:

- :meth:`Ledger.claim` inserts the row as ``pending`` inside ``BEGIN IMMEDIATE``
  (one writer at a time across processes), so of two processes racing for the
  same view exactly one gets it.
- The row moves ``pending`` -> ``submitting`` (written *before* the backend is
  asked) -> ``active`` (written after it accepted, with the run id). A crash
  between the two leaves ``submitting``: recovery asks the backend whether the
  run exists (``Backend.find_run``) and adopts it instead of starting another.
- Every row names its owner (pid, host and the process's start time, so a
  recycled pid after a reboot is not mistaken for the owner); rows of dead
  owners are what recovery looks at (:meth:`Ledger.orphans`).

The ``scans`` table records each scan folder the launcher saw, whether all its
views were handed over (``submitted``), or why the scan failed as a whole
(no views, unreadable folder, backend refused to create its folders).

Concurrency: WAL mode, a busy timeout, one connection per thread.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

from flows.backend import STAGES, RunProgress, RunStatus, StartedRun, Trigger, ViewRequest
from flows.errors import ConfigError

#: Bump when the schema changes (and add a migration in ``_migrate``).
SCHEMA_VERSION = 1

#: States in which a run must not be started again (unless forced, for succeeded).
_BLOCKING = (
    RunStatus.PENDING,
    RunStatus.SUBMITTING,
    RunStatus.ACTIVE,
    RunStatus.INACTIVE,
    RunStatus.SUCCEEDED,
)
_UNFINISHED = (RunStatus.PENDING, RunStatus.SUBMITTING, RunStatus.ACTIVE, RunStatus.INACTIVE)

_SCHEMA = """
CREATE TABLE runs (
    scan_id       INTEGER NOT NULL,
    view          INTEGER NOT NULL,
    view_file     TEXT    NOT NULL,
    scan_folder   TEXT    NOT NULL,
    recon         TEXT    NOT NULL,   -- JSON: the reconstruction options the run was asked for
    run_id        TEXT,
    backend       TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    trigger       TEXT    NOT NULL,
    attempt       INTEGER NOT NULL DEFAULT 1,
    owner_pid     INTEGER,
    owner_host    TEXT,
    owner_started TEXT,               -- the owner's process start time (pid reuse guard)
    created_at    REAL    NOT NULL,   -- epoch seconds
    submitted_at  REAL,
    started_at    REAL,
    finished_at   REAL,
    stage         TEXT,
    stage_seconds TEXT    NOT NULL DEFAULT '{}',  -- JSON: transfer_in/compute/transfer_out/other
    error         TEXT,
    web_url       TEXT,
    output        TEXT,               -- JSON: the compute function's summary
    updated_at    REAL    NOT NULL,
    UNIQUE (scan_id, view)
);
CREATE INDEX runs_by_status ON runs (status);
CREATE TABLE scans (
    scan_id      INTEGER PRIMARY KEY,
    folder       TEXT NOT NULL,
    first_seen   REAL NOT NULL,
    completed_at REAL,               -- when every selected view was handed to the backend
    status       TEXT NOT NULL,
    error        TEXT,
    updated_at   REAL NOT NULL
);
"""


class ScanState(StrEnum):
    """Ledger state of a whole scan."""

    SEEN = "seen"  #: the launcher started handing its views over (or was interrupted)
    SUBMITTED = "submitted"  #: every selected view was claimed (started, skipped or failed)
    FAILED = "failed"  #: the scan as a whole could not be started; ``error`` says why


@dataclasses.dataclass(frozen=True)
class Owner:
    """A process that owns ledger rows."""

    pid: int
    host: str
    started: str | None

    @classmethod
    def current(cls) -> Owner:
        return cls(os.getpid(), socket.gethostname(), process_start_marker(os.getpid()))

    def alive(self) -> bool:
        """False only when the owner is known to be gone (same host, no such process)."""
        if self.host != socket.gethostname():
            return True  # cannot tell from here; leave its rows alone
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
        if self.started is not None:
            return process_start_marker(self.pid) == self.started
        return True


def process_start_marker(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, plus the boot id (Linux), or None.

    Together with the pid it identifies one process across pid reuse and reboots.
    """
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        boot_id = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # Field 22 (starttime) counted after the parenthesised command name.
    fields = stat.rsplit(")", 1)[-1].split()
    return f"{boot_id}:{fields[19]}" if len(fields) > 19 else None


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One row of the ``runs`` table."""

    scan_id: int
    view: int
    view_file: str
    scan_folder: str
    recon: dict[str, Any]
    run_id: str | None
    backend: str
    status: RunStatus
    trigger: Trigger
    attempt: int
    owner: Owner
    created_at: float
    submitted_at: float | None
    started_at: float | None
    finished_at: float | None
    stage: str | None
    stage_seconds: dict[str, float]
    """Seconds per stage: ``transfer_in``, ``compute``, ``transfer_out`` and ``other``
    (wall time from submission to completion minus the three stages)."""
    error: str | None
    web_url: str | None
    output: dict[str, Any] | None
    updated_at: float

    @property
    def label(self) -> str:
        return f"scan{self.scan_id}-v{self.view:03d}"

    def request(self) -> ViewRequest:
        """The request this row was claimed for (used to restart or adopt it)."""
        return ViewRequest(
            scan_id=self.scan_id,
            view=self.view,
            view_file=self.view_file,
            scan_folder=self.scan_folder,
            recon=dict(self.recon),
            trigger=self.trigger,
            attempt=self.attempt,
        )

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RunRecord:
        return cls(
            scan_id=row["scan_id"],
            view=row["view"],
            view_file=row["view_file"],
            scan_folder=row["scan_folder"],
            recon=json.loads(row["recon"]),
            run_id=row["run_id"],
            backend=row["backend"],
            status=RunStatus(row["status"]),
            trigger=Trigger(row["trigger"]),
            attempt=row["attempt"],
            owner=Owner(row["owner_pid"], row["owner_host"], row["owner_started"]),
            created_at=row["created_at"],
            submitted_at=row["submitted_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            stage=row["stage"],
            stage_seconds=json.loads(row["stage_seconds"]),
            error=row["error"],
            web_url=row["web_url"],
            output=json.loads(row["output"]) if row["output"] else None,
            updated_at=row["updated_at"],
        )


@dataclasses.dataclass(frozen=True)
class ScanRecord:
    """One row of the ``scans`` table."""

    scan_id: int
    folder: str
    first_seen: float
    completed_at: float | None
    status: ScanState
    error: str | None


class Ledger:
    """The SQLite run ledger at ``path`` (created with its folder on first use).

    Safe to share between threads (each thread gets its own connection) and
    between processes (SQLite locking; writes that decide something run inside
    ``BEGIN IMMEDIATE``).
    """

    def __init__(self, path: pathlib.Path | str, *, busy_timeout_s: float = 30.0):
        self.path = pathlib.Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self.owner = Owner.current()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"ledger {self.path}: cannot create its folder: {err}") from err
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise ConfigError(
                    f"ledger {self.path}: schema version {version} was written by a newer "
                    f"ptychoflow (this one reads version {SCHEMA_VERSION}); upgrade ptychoflow"
                )

    # -- connections ---------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                # Each thread uses only its own connection; check_same_thread=False
                # lets close() release them all from one thread.
                db = sqlite3.connect(
                    self.path,
                    timeout=self._busy_timeout_s,
                    isolation_level=None,
                    check_same_thread=False,
                )
                db.row_factory = sqlite3.Row
                db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
                db.execute("PRAGMA journal_mode = WAL")
                # FULL: a row written before a run starts survives a power loss too.
                db.execute("PRAGMA synchronous = FULL")
            except sqlite3.DatabaseError as err:
                raise ConfigError(f"ledger {self.path}: not a usable SQLite file: {err}") from err
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the database's write lock from its start."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection (call when no thread uses the ledger any more)."""
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    # -- runs: the exactly-once path -----------------------------------------------------------

    def claim(self, request: ViewRequest, backend: str, *, force: bool = False) -> bool:
        """Record that this process is about to start ``request``; False if it must not.

        Inserts the row as ``pending``. An existing row that is pending,
        submitting, active or succeeded is left alone (False); ``force`` also
        resets a succeeded row. A failed row is reset (a retry). A reset keeps
        the row and increments ``attempt``.
        """
        now = time.time()
        owner = self.owner
        with self._transaction() as db:
            row = db.execute(
                "SELECT status, attempt FROM runs WHERE scan_id = ? AND view = ?",
                (request.scan_id, request.view),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO runs (scan_id, view, view_file, scan_folder, recon, backend,"
                    " status, trigger, attempt, owner_pid, owner_host, owner_started,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
                    (
                        request.scan_id,
                        request.view,
                        request.view_file,
                        request.scan_folder,
                        json.dumps(request.recon, sort_keys=True),
                        backend,
                        RunStatus.PENDING.value,
                        Trigger(request.trigger).value,
                        owner.pid,
                        owner.host,
                        owner.started,
                        now,
                        now,
                    ),
                )
                return True
            status = RunStatus(row["status"])
            if status in _UNFINISHED or (status is RunStatus.SUCCEEDED and not force):
                return False
            db.execute(
                "UPDATE runs SET view_file = ?, scan_folder = ?, recon = ?, backend = ?,"
                " status = ?, trigger = ?, attempt = attempt + 1, owner_pid = ?,"
                " owner_host = ?, owner_started = ?, run_id = NULL, submitted_at = NULL,"
                " started_at = NULL, finished_at = NULL, stage = NULL, stage_seconds = '{}',"
                " error = NULL, web_url = NULL, output = NULL, updated_at = ?"
                " WHERE scan_id = ? AND view = ?",
                (
                    request.view_file,
                    request.scan_folder,
                    json.dumps(request.recon, sort_keys=True),
                    backend,
                    RunStatus.PENDING.value,
                    Trigger(request.trigger).value,
                    owner.pid,
                    owner.host,
                    owner.started,
                    now,
                    request.scan_id,
                    request.view,
                ),
            )
            return True

    def mark_submitting(self, scan_id: int, view: int) -> None:
        """The run is about to be handed to the backend (written before the call)."""
        now = time.time()
        self._update(
            scan_id,
            view,
            "status = ?, submitted_at = ?, updated_at = ?",
            (RunStatus.SUBMITTING.value, now, now),
        )

    def mark_started(self, scan_id: int, view: int, run: StartedRun) -> None:
        """The backend accepted the run: record its id (and web link)."""
        now = time.time()
        self._update(
            scan_id,
            view,
            "status = ?, run_id = ?, web_url = ?, started_at = ?,"
            " submitted_at = COALESCE(submitted_at, ?), updated_at = ?",
            (RunStatus.ACTIVE.value, run.run_id, run.web_url, now, now, now),
        )

    def mark_failed(self, scan_id: int, view: int, reason: str) -> None:
        """The run could not be started or failed; ``reason`` is shown by ``status``."""
        now = time.time()
        with self._transaction() as db:
            row = self._get(db, scan_id, view)
            if row is None:
                raise KeyError(f"ledger has no row for scan {scan_id} view {view}")
            seconds = _with_other(row.stage_seconds, row.submitted_at, now)
            db.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ?, stage_seconds = ?,"
                " updated_at = ? WHERE scan_id = ? AND view = ?",
                (RunStatus.FAILED.value, reason, now, json.dumps(seconds), now, scan_id, view),
            )

    def update_progress(self, scan_id: int, view: int, progress: RunProgress) -> RunRecord:
        """Store what the backend reported; on a terminal state also the ``other`` time."""
        now = time.time()
        with self._transaction() as db:
            row = self._get(db, scan_id, view)
            if row is None:
                raise KeyError(f"ledger has no row for scan {scan_id} view {view}")
            if row.status.terminal:
                return row  # a late poll never rewrites a finished row
            seconds = {k: float(v) for k, v in progress.stage_seconds.items()}
            finished_at = None
            if progress.status.terminal:
                finished_at = now
                seconds = _with_other(seconds, row.submitted_at, now)
            db.execute(
                "UPDATE runs SET status = ?, stage = ?, stage_seconds = ?, error = ?,"
                " output = ?, finished_at = ?, updated_at = ? WHERE scan_id = ? AND view = ?",
                (
                    progress.status.value,
                    None if progress.status.terminal else progress.stage,
                    json.dumps(seconds),
                    progress.error,
                    json.dumps(progress.output) if progress.output is not None else None,
                    finished_at,
                    now,
                    scan_id,
                    view,
                ),
            )
            updated = self._get(db, scan_id, view)
            assert updated is not None
            return updated

    # -- recovery ------------------------------------------------------------------------------

    def orphans(self, backend: str) -> list[RunRecord]:
        """Unfinished rows of ``backend`` whose owner process is gone (on this host)."""
        placeholders = ", ".join("?" for _ in _UNFINISHED)
        rows = self._connection().execute(
            f"SELECT * FROM runs WHERE backend = ? AND status IN ({placeholders})"
            " ORDER BY scan_id, view",
            (backend, *(s.value for s in _UNFINISHED)),
        )
        return [r for r in map(RunRecord.from_row, rows) if not r.owner.alive()]

    def take_over(self, record: RunRecord) -> bool:
        """Make this process the owner of an orphaned row; False if someone else did first."""
        me = self.owner
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE runs SET owner_pid = ?, owner_host = ?, owner_started = ?, updated_at = ?"
                " WHERE scan_id = ? AND view = ? AND status = ? AND attempt = ?"
                " AND owner_pid IS ? AND owner_host IS ? AND owner_started IS ?",
                (
                    me.pid,
                    me.host,
                    me.started,
                    time.time(),
                    record.scan_id,
                    record.view,
                    record.status.value,
                    record.attempt,
                    record.owner.pid,
                    record.owner.host,
                    record.owner.started,
                ),
            )
            return cursor.rowcount == 1

    def restart(self, scan_id: int, view: int) -> None:
        """Reset a row whose run died with its owner to ``pending`` (same row, attempt + 1)."""
        now = time.time()
        self._update(
            scan_id,
            view,
            "status = ?, attempt = attempt + 1, run_id = NULL, web_url = NULL,"
            " submitted_at = NULL, started_at = NULL, finished_at = NULL, stage = NULL,"
            " stage_seconds = '{}', error = NULL, output = NULL, updated_at = ?",
            (RunStatus.PENDING.value, now),
        )

    # -- scans ---------------------------------------------------------------------------------

    def scan_seen(self, scan_id: int, folder: str) -> None:
        """Record that the launcher is handing this scan's views over."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO scans (scan_id, folder, first_seen, status, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (scan_id) DO UPDATE SET folder = excluded"
                ".folder, status = excluded.status, error = NULL, updated_at = excluded"
                ".updated_at",
                (scan_id, folder, now, ScanState.SEEN.value, now),
            )

    def scan_submitted(self, scan_id: int) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE scans SET status = ?, completed_at = ?, updated_at = ? WHERE scan_id = ?",
                (ScanState.SUBMITTED.value, now, now, scan_id),
            )

    def scan_failed(self, scan_id: int, folder: str, reason: str) -> None:
        """Record that the scan as a whole could not be started, and why."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO scans (scan_id, folder, first_seen, status, error, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scan_id) DO UPDATE SET"
                " status = excluded.status, error = excluded.error,"
                " updated_at = excluded.updated_at",
                (scan_id, folder, now, ScanState.FAILED.value, reason, now),
            )

    def scan(self, scan_id: int) -> ScanRecord | None:
        row = (
            self._connection()
            .execute("SELECT * FROM scans WHERE scan_id = ?", (scan_id,))
            .fetchone()
        )
        return _scan_record(row) if row else None

    def scans(self) -> list[ScanRecord]:
        rows = self._connection().execute("SELECT * FROM scans ORDER BY scan_id")
        return [_scan_record(row) for row in rows]

    # -- queries for ``status`` ----------------------------------------------------------------

    def get(self, scan_id: int, view: int) -> RunRecord | None:
        return self._get(self._connection(), scan_id, view)

    def runs(self, scan_id: int | None = None) -> list[RunRecord]:
        """Rows of one scan (or all), ordered by scan and view."""
        db = self._connection()
        if scan_id is None:
            rows = db.execute("SELECT * FROM runs ORDER BY scan_id, view")
        else:
            rows = db.execute("SELECT * FROM runs WHERE scan_id = ? ORDER BY view", (scan_id,))
        return [RunRecord.from_row(r) for r in rows]

    def counts(self, scan_id: int | None = None) -> dict[RunStatus, int]:
        """Number of rows per status (every status present, zeros included)."""
        db = self._connection()
        query = "SELECT status, COUNT(*) FROM runs"
        params: tuple[Any, ...] = ()
        if scan_id is not None:
            query += " WHERE scan_id = ?"
            params = (scan_id,)
        counts = dict.fromkeys(RunStatus, 0)
        for status, count in db.execute(query + " GROUP BY status", params):
            counts[RunStatus(status)] = count
        return counts

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _get(db: sqlite3.Connection, scan_id: int, view: int) -> RunRecord | None:
        row = db.execute(
            "SELECT * FROM runs WHERE scan_id = ? AND view = ?", (scan_id, view)
        ).fetchone()
        return RunRecord.from_row(row) if row else None

    def _update(self, scan_id: int, view: int, assignments: str, params: tuple[Any, ...]) -> None:
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE runs SET {assignments} WHERE scan_id = ? AND view = ?",
                (*params, scan_id, view),
            )
            if cursor.rowcount != 1:
                raise KeyError(f"ledger has no row for scan {scan_id} view {view}")


def _with_other(
    stage_seconds: dict[str, float], submitted_at: float | None, finished_at: float
) -> dict[str, float]:
    """``stage_seconds`` plus ``other`` = wall time since submission minus the stages."""
    seconds = {k: float(v) for k, v in stage_seconds.items() if k != "other"}
    if submitted_at is not None:
        staged = sum(seconds.get(stage, 0.0) for stage in STAGES)
        seconds["other"] = max(0.0, finished_at - submitted_at - staged)
    return seconds


def _scan_record(row: sqlite3.Row) -> ScanRecord:
    return ScanRecord(
        scan_id=row["scan_id"],
        folder=row["folder"],
        first_seen=row["first_seen"],
        completed_at=row["completed_at"],
        status=ScanState(row["status"]),
        error=row["error"],
    )
