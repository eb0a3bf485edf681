"""The run ledger: one SQLite file per installation, one row per (scan folder, view file).

Identity: a scan is its folder name (``scan100``, ``flyscan100``), a view is its
file name inside that folder (``view003.cxi``), never a position in a listing.

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

The ``scans`` table records each scan folder the launcher saw, the name of its
folders under ``input/`` and ``recon/`` (``scan_dir``: the scan id, or the folder
name when another folder took that id first), whether all its views were handed
over (``submitted``), or why the scan failed as a whole.

Failure modes, each a :class:`~flows.errors.LedgerError` naming the file:
a lock held by another process beyond a bounded wait (:class:`LedgerBusyError`,
naming the holder's pid and command), a damaged file (:class:`LedgerDamagedError`,
with the recovery commands), and an empty or missing ledger while results exist
(:class:`LedgerLostError`: refused, so finished scans are not run again).

Concurrency: WAL mode, one connection per thread.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import pathlib
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any, TypeVar

from flows.backend import (
    STAGES,
    RunProgress,
    RunStatus,
    StartedRun,
    Trigger,
    ViewRequest,
    run_label,
)
from flows.config import Config
from flows.errors import (
    ConfigError,
    LedgerBusyError,
    LedgerDamagedError,
    LedgerError,
    LedgerLostError,
    LedgerUnwritableError,
)
from flows.input_fingerprint import InputFingerprint
from flows.terminal import printable

log = logging.getLogger("ptychoflow.ledger")

T = TypeVar("T")

#: Bump when the schema changes (and add a migration in ``_migrate``).
SCHEMA_VERSION = 3
#: Bytes that must be free beside the ledger before a view is started (write-ahead: the
#: rows recording the start are written first, and SQLite's WAL needs pages for them).
LEDGER_MIN_FREE_BYTES = 1024 * 1024

#: States in which a run must not be started again (unless forced, for succeeded).
_UNFINISHED = (
    RunStatus.PENDING,
    RunStatus.SUBMITTING,
    RunStatus.ACTIVE,
    RunStatus.INACTIVE,
    RunStatus.UNKNOWN,  # may still run at Globus: never claimed again by itself
)

#: The command that repairs a damaged or lost ledger (named in error messages).
RECOVERY_HINT = (
    "run `ptychoflow ledger check` to see what is wrong and `ptychoflow ledger rebuild` "
    "to rebuild it from the result files (the old file is moved aside, not deleted)"
)

_SCHEMA = """
CREATE TABLE runs (
    scan_folder   TEXT    NOT NULL,   -- the scan's key: its folder name
    view_file     TEXT    NOT NULL,   -- the view's key: its file name in that folder
    scan_id       INTEGER NOT NULL,   -- the number in the folder name
    scan_dir      TEXT    NOT NULL,   -- folder name under input/ and recon/
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
    -- schema 3 (issue 16): the view file when claimed, and automatic retries
    input_size    INTEGER,            -- bytes
    input_mtime_ns INTEGER,
    input_hash    TEXT,               -- flows.input_fingerprint's fast hash
    transient_retries INTEGER NOT NULL DEFAULT 0,  -- automatic retries after transient failures
    submitted_clock TEXT,             -- "<boot id>:<CLOCK_BOOTTIME seconds>" at submission
    PRIMARY KEY (scan_folder, view_file)
);
CREATE INDEX runs_by_status ON runs (status);
CREATE TABLE scans (
    folder       TEXT PRIMARY KEY,
    scan_id      INTEGER,            -- NULL when the folder name's id was refused
    scan_dir     TEXT UNIQUE,        -- folder name under input/ and recon/
    first_seen   REAL NOT NULL,
    completed_at REAL,               -- when every selected view was handed to the backend
    status       TEXT NOT NULL,
    error        TEXT,
    updated_at   REAL NOT NULL
)
"""

#: Columns each table must have (checked at open and by ``ledger check``).
EXPECTED_COLUMNS = {
    "runs": {
        "scan_folder", "view_file", "scan_id", "scan_dir", "recon", "run_id", "backend",
        "status", "trigger", "attempt", "owner_pid", "owner_host", "owner_started",
        "created_at", "submitted_at", "started_at", "finished_at", "stage", "stage_seconds",
        "error", "web_url", "output", "updated_at", "input_size", "input_mtime_ns",
        "input_hash", "transient_retries", "submitted_clock",
    },
    "scans": {
        "folder", "scan_id", "scan_dir", "first_seen", "completed_at", "status", "error",
        "updated_at",
    },
}  # fmt: skip


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
    """One row of the ``runs`` table: one view (``scan_folder``/``view_file``)."""

    scan_folder: str
    """The scan's key: its folder name on the acquisition side (``scan100``)."""
    view_file: str
    """The view's key: its file name inside the scan folder (``view003.cxi``)."""
    scan_id: int
    """The number in the scan folder's name."""
    scan_dir: str
    """Folder name under ``input/`` and ``recon/`` (``100``, or the folder name)."""
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
    input: InputFingerprint | None = None
    """The view file when it was last claimed (size, mtime, fast hash); None before
    schema 3 or when it could not be read."""
    transient_retries: int = 0
    """Automatic retries after transient failures (:mod:`flows.transient_failures`)."""
    submitted_clock: str | None = None
    """The steady clock at submission (:func:`steady_clock`), for durations."""

    @property
    def key(self) -> tuple[str, str]:
        """``(scan_folder, view_file)``: what identifies the row."""
        return (self.scan_folder, self.view_file)

    @property
    def view(self) -> str:
        """The view's name: its file name without the suffix (``view003``)."""
        return pathlib.PurePosixPath(self.view_file).stem

    @property
    def label(self) -> str:
        """The run label: ``scan100-view003`` (see :attr:`ViewRequest.label`)."""
        return run_label(self.scan_folder, self.view_file)

    @property
    def result_name(self) -> str:
        """The result's path below ``recon/``: ``100/view003.h5``."""
        return f"{self.scan_dir}/{self.view}.h5"

    def request(self) -> ViewRequest:
        """The request this row was claimed for (used to restart or adopt it)."""
        return ViewRequest(
            scan_id=self.scan_id,
            view_file=self.view_file,
            scan_folder=self.scan_folder,
            recon=dict(self.recon),
            trigger=self.trigger,
            attempt=self.attempt,
            scan_dir=self.scan_dir,
        )

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RunRecord:
        return cls(
            scan_folder=row["scan_folder"],
            view_file=row["view_file"],
            scan_id=row["scan_id"],
            scan_dir=row["scan_dir"],
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
            input=(
                InputFingerprint(row["input_size"], row["input_mtime_ns"], row["input_hash"])
                if row["input_hash"] is not None
                else None
            ),
            transient_retries=row["transient_retries"],
            submitted_clock=row["submitted_clock"],
        )


@dataclasses.dataclass(frozen=True)
class ScanRecord:
    """One row of the ``scans`` table: one scan folder."""

    folder: str
    """The scan's key: its folder name."""
    scan_id: int | None
    """The number in the folder name (None when it was refused, e.g. too many digits)."""
    scan_dir: str | None
    """Folder name under ``input/`` and ``recon/`` (None until the scan was accepted)."""
    first_seen: float
    completed_at: float | None
    status: ScanState
    error: str | None


class Ledger:
    """The SQLite run ledger at ``path`` (created with its folder on first use).

    ``busy_timeout_s``: how long a call waits for a lock another process holds
    before :class:`LedgerBusyError` (a warning naming the holder is logged at once).
    ``read_only``: open for reading only (``status``, a web portal); writes fail with
    :class:`LedgerError`, and a missing file is an error instead of a new ledger.
    ``result_roots``: folders holding ``<scan_dir>/<view>.h5`` results; when the
    ledger is missing or empty and a result exists under one of them, the ledger
    was lost and :class:`LedgerLostError` is raised instead of starting afresh.

    Safe to share between threads (each thread gets its own connection) and
    between processes (SQLite locking; writes that decide something run inside
    ``BEGIN IMMEDIATE``).
    """

    def __init__(
        self,
        path: pathlib.Path | str,
        *,
        busy_timeout_s: float = 10.0,
        result_roots: Iterable[pathlib.Path] = (),
        read_only: bool = False,
    ):
        self.path = pathlib.Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._probe_files: dict[str, int] = {}
        self.owner = Owner.current()
        self.read_only = read_only
        existed = self.path.exists()
        if read_only:
            if not existed:
                raise LedgerError(f"ledger {self.path} does not exist")
            try:
                self._read(self._check_read_only)
            except BaseException:
                self.close()
                raise
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"ledger {self.path}: cannot create its folder: {err}") from err
        roots = list(result_roots)
        if roots and self._holds_no_history(existed):
            evidence = find_results(roots)
            if evidence:
                raise LedgerLostError(
                    f"ledger {self.path} is "
                    + ("empty" if existed else "missing")
                    + f", but results exist (e.g. {evidence[0]}): the run history was "
                    "lost, and starting afresh would run finished scans again. Run "
                    "`ptychoflow ledger rebuild` to rebuild it from the result files"
                )
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _check_read_only(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise LedgerDamagedError(
                f"ledger {self.path}: schema version {version}; this ptychoflow reads "
                f"{SCHEMA_VERSION} (open it once for writing, e.g. with run-flow, to migrate)"
            )
        problems = schema_problems(db)
        if problems:
            raise LedgerDamagedError(f"ledger {self.path}: {'; '.join(problems)}; {RECOVERY_HINT}")

    def _holds_no_history(self, existed: bool) -> bool:
        """True when the ledger file is missing, or a database without any table (a file
        truncated to 0 bytes reads as one). Looked at read-only: nothing is written."""
        if not existed:
            return True
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1)
            try:
                count: int = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
                return count == 0
            finally:
                db.close()
        except sqlite3.Error:
            return False  # damaged or locked: opening it says which

    def _open(self) -> None:
        def create_or_check(db: sqlite3.Connection) -> None:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if version == 0 and not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version == 1:
                _migrate_from_v1(db)
            elif version == 2:
                _migrate_from_v2(db)
            elif version > SCHEMA_VERSION:
                raise ConfigError(
                    f"ledger {self.path}: schema version {version} was written by a newer "
                    f"ptychoflow (this one reads version {SCHEMA_VERSION}); upgrade ptychoflow"
                )
            problems = schema_problems(db)
            if problems:
                raise LedgerDamagedError(
                    f"ledger {self.path}: {'; '.join(problems)}; {RECOVERY_HINT}"
                )

        self._write(create_or_check)

    # -- connections and errors ----------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # Each thread uses only its own connection; check_same_thread=False
            # lets close() release them all from one thread. Locks are waited for
            # in _retrying (with the holder named), so SQLite itself waits briefly.
            target = f"file:{self.path}?mode=ro" if self.read_only else str(self.path)
            db = sqlite3.connect(
                target,
                uri=self.read_only,
                timeout=0.2,
                isolation_level=None,
                check_same_thread=False,
            )
            with self._connections_lock:
                self._connections.append(db)
            db.row_factory = sqlite3.Row
            if not self.read_only:
                self._retrying(lambda: db.execute("PRAGMA journal_mode = WAL"))
                # FULL: a row written before a run starts survives a power loss too.
                db.execute("PRAGMA synchronous = FULL")
            self._local.db = db
        return db

    def _retrying(self, call: Callable[[], T]) -> T:
        """``call()``, retried while another process holds the lock (up to
        ``busy_timeout_s``); SQLite errors become :class:`LedgerError` subclasses."""
        deadline = time.monotonic() + self._busy_timeout_s
        warned = False
        while True:
            try:
                return call()
            except sqlite3.Error as err:
                if not _is_busy(err):
                    raise self._translate(err) from err
                holder = self.lock_holder()
                if time.monotonic() >= deadline:
                    raise LedgerBusyError(
                        f"ledger {self.path} is locked by {holder}; gave up after "
                        f"{self._busy_timeout_s:g} s. Try again when it is done (the "
                        "watcher retries on its own)"
                    ) from err
                if not warned:
                    log.warning(
                        "ledger %s is locked by %s; waiting up to %g s",
                        self.path,
                        holder,
                        self._busy_timeout_s,
                    )
                    warned = True
                time.sleep(0.1)

    def _translate(self, err: sqlite3.Error) -> LedgerError:
        name = getattr(err, "sqlite_errorname", "")
        if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in str(err):
            return LedgerDamagedError(f"ledger {self.path} is damaged ({err}); {RECOVERY_HINT}")
        if name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR"):
            return LedgerUnwritableError(
                f"ledger {self.path} cannot be written ({err}; is its disk full, failing or "
                "read-only?); nothing more is started until it can be"
            )
        if name in ("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_READONLY", "SQLITE_AUTH"):
            return LedgerUnwritableError(
                f"ledger {self.path}: cannot open it for writing ({err}); check that the "
                "file and its folder exist and are writable by this account"
            )
        return LedgerDamagedError(f"ledger {self.path}: {err}; {RECOVERY_HINT}")

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(db)`` inside a write transaction that holds the write lock from its start."""

        def attempt() -> T:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return self._retrying(attempt)

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return self._retrying(lambda: work(self._connection()))

    def lock_holder(self) -> str:
        """Who holds the ledger's write lock, in words: ``pid 1234 (sqlite3 ledger.sqlite)``
        from the POSIX lock SQLite took (``fcntl(F_GETLK)``), or a note that it is not
        visible from here (another host on a network file system)."""
        pids: set[int] = set()
        shm = f"{self.path}-shm"
        # WAL mode: the write lock is byte 120 of the -shm file; an exclusive-mode
        # connection locks the database file's PENDING..SHARED bytes instead.
        for name, start, length in ((shm, 120, 1), (str(self.path), 0x40000000, 512)):
            pid = self._lock_owner(name, start, length)
            if pid:
                pids.add(pid)
        if not pids:
            return "another process (not visible from this host: a network file system?)"
        return ", ".join(f"pid {pid} ({command_of(pid)})" for pid in sorted(pids))

    def _lock_owner(self, name: str, start: int, length: int) -> int | None:
        # The probing descriptors stay open until close(): closing any descriptor of a
        # file drops every POSIX lock this process holds on it, SQLite's included.
        fd = self._probe_files.get(name)
        if fd is None:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            self._probe_files[name] = fd
        request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
        try:
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, request)
        except OSError:
            return None
        lock_type, _, _, _, pid = struct.unpack("hhqqi4x", answer)
        return pid if lock_type != fcntl.F_UNLCK and pid > 0 else None

    def close(self) -> None:
        """Close every thread's connection (call when no thread uses the ledger any more)."""
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
            for fd in self._probe_files.values():
                os.close(fd)
            self._probe_files.clear()
        self._local = threading.local()

    def ensure_space(self) -> None:
        """Raise :class:`LedgerUnwritableError` when the ledger's file system has less than
        :data:`LEDGER_MIN_FREE_BYTES` free: write-ahead needs room for the rows of a start
        (claim, submitting, started) *before* the start, so the launcher asks first."""
        try:
            info = os.statvfs(self.path.parent)
        except OSError:
            return  # the next write says what is wrong
        free = info.f_bavail * info.f_frsize
        if free < LEDGER_MIN_FREE_BYTES:
            raise LedgerUnwritableError(
                f"ledger {self.path}: only {free} bytes free on its file system (at least "
                f"{LEDGER_MIN_FREE_BYTES} needed to record a start before making it); "
                "nothing more is started. Free space there, then start again"
            )

    # -- runs: the exactly-once path -----------------------------------------------------------

    def claim(
        self,
        request: ViewRequest,
        backend: str,
        *,
        force: bool = False,
        fingerprint: InputFingerprint | None = None,
        transient_retry: bool = False,
    ) -> bool:
        """Record that this process is about to start ``request``; False if it must not.

        Inserts the row as ``pending``. An existing row that is pending,
        submitting, active or succeeded is left alone (False); ``force`` also
        resets a succeeded row. A cancelled row is reset (a retry); a failed one too,
        except for the watcher (``trigger`` auto), which retries a failed view only as
        a ``transient_retry`` (:mod:`flows.transient_failures`, counted in
        ``transient_retries``). A reset keeps the row and increments ``attempt``.
        ``fingerprint``: the view file now (size, mtime, fast hash), stored in the row.
        """
        now = time.time()
        values = self._row_values(request, backend, RunStatus.PENDING)
        seen = (
            (None, None, None)
            if fingerprint is None
            else (fingerprint.size, fingerprint.mtime_ns, fingerprint.fast_hash)
        )

        def work(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT status FROM runs WHERE scan_folder = ? AND view_file = ?",
                (request.scan_folder, request.view_file),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO runs (scan_folder, view_file, scan_id, scan_dir, recon,"
                    " backend, status, trigger, attempt, owner_pid, owner_host, owner_started,"
                    " created_at, updated_at, input_size, input_mtime_ns, input_hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (request.scan_folder, request.view_file, *values, now, now, *seen),
                )
                return True
            status = RunStatus(row["status"])
            if status in _UNFINISHED or (status is RunStatus.SUCCEEDED and not force):
                return False
            automatic = Trigger(request.trigger) is Trigger.AUTO
            if status is RunStatus.FAILED and automatic and not transient_retry:
                return False  # a person decides (run-flow); only transient failures retry
            retries = "transient_retries + 1" if transient_retry else "0"
            db.execute(
                "UPDATE runs SET scan_id = ?, scan_dir = ?, recon = ?, backend = ?,"
                " status = ?, trigger = ?, attempt = attempt + 1, owner_pid = ?,"
                " owner_host = ?, owner_started = ?, run_id = NULL, submitted_at = NULL,"
                " started_at = NULL, finished_at = NULL, stage = NULL, stage_seconds = '{}',"
                " error = NULL, web_url = NULL, output = NULL, updated_at = ?,"
                " input_size = ?, input_mtime_ns = ?, input_hash = ?,"
                f" transient_retries = {retries}"
                " WHERE scan_folder = ? AND view_file = ?",
                (*values, now, *seen, request.scan_folder, request.view_file),
            )
            return True

        return self._write(work)

    def mark_submitting(self, scan_folder: str, view_file: str) -> None:
        """The run is about to be handed to the backend (written before the call)."""
        now = time.time()
        self._update(
            scan_folder,
            view_file,
            "status = ?, submitted_at = ?, submitted_clock = ?, updated_at = ?",
            (RunStatus.SUBMITTING.value, now, steady_clock(), now),
        )

    def mark_started(self, scan_folder: str, view_file: str, run: StartedRun) -> None:
        """The backend accepted the run: record its id (and web link)."""
        now = time.time()
        self._update(
            scan_folder,
            view_file,
            "status = ?, run_id = ?, web_url = ?, started_at = ?,"
            " submitted_at = COALESCE(submitted_at, ?), updated_at = ?",
            (RunStatus.ACTIVE.value, run.run_id, run.web_url, now, now, now),
        )

    def mark_failed(self, scan_folder: str, view_file: str, reason: str) -> None:
        """The run could not be started or failed; ``reason`` is shown by ``status``."""
        self._finish(scan_folder, view_file, RunStatus.FAILED, reason)

    def mark_cancelled(self, scan_folder: str, view_file: str, reason: str) -> bool:
        """An unfinished run was stopped (e.g. ``reason = "cancelled by SIGTERM"``);
        False when the row had finished already (it is left as it is)."""
        return self._finish(
            scan_folder, view_file, RunStatus.CANCELLED, reason, only_unfinished=True
        )

    def _finish(
        self,
        scan_folder: str,
        view_file: str,
        status: RunStatus,
        reason: str,
        only_unfinished: bool = False,
    ) -> bool:
        now = time.time()

        def work(db: sqlite3.Connection) -> bool:
            row = self._get(db, scan_folder, view_file)
            if row is None:
                raise KeyError(f"ledger has no row for {scan_folder}/{view_file}")
            if only_unfinished and row.status.terminal:
                return False
            seconds = _with_other(row.stage_seconds, row.submitted_at, now, row.submitted_clock)
            db.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ?, stage = NULL,"
                " stage_seconds = ?, updated_at = ? WHERE scan_folder = ? AND view_file = ?",
                (status.value, reason, now, json.dumps(seconds), now, scan_folder, view_file),
            )
            return True

        return self._write(work)

    def update_progress(self, scan_folder: str, view_file: str, progress: RunProgress) -> RunRecord:
        """Store what the backend reported; on a terminal state also the ``other`` time."""
        now = time.time()

        def work(db: sqlite3.Connection) -> RunRecord:
            row = self._get(db, scan_folder, view_file)
            if row is None:
                raise KeyError(f"ledger has no row for {scan_folder}/{view_file}")
            if row.status.terminal:
                return row  # a late poll never rewrites a finished row
            seconds = {k: float(v) for k, v in progress.stage_seconds.items()}
            finished_at = None
            if progress.status.terminal:
                finished_at = now
                seconds = _with_other(seconds, row.submitted_at, now, row.submitted_clock)
            db.execute(
                "UPDATE runs SET status = ?, stage = ?, stage_seconds = ?, error = ?,"
                " output = ?, finished_at = ?, updated_at = ?"
                " WHERE scan_folder = ? AND view_file = ?",
                (
                    progress.status.value,
                    None if progress.status.terminal else progress.stage,
                    json.dumps(seconds),
                    progress.error,
                    json.dumps(progress.output) if progress.output is not None else None,
                    finished_at,
                    now,
                    scan_folder,
                    view_file,
                ),
            )
            updated = self._get(db, scan_folder, view_file)
            assert updated is not None
            return updated

        return self._write(work)

    def _row_values(self, request: ViewRequest, backend: str, status: RunStatus) -> tuple[Any, ...]:
        """(scan_id, scan_dir, recon, backend, status, trigger, owner_pid, owner_host,
        owner_started) of a row this process writes for ``request``."""
        owner = self.owner
        return (
            request.scan_id,
            request.compute_dir,
            json.dumps(request.recon, sort_keys=True),
            backend,
            status.value,
            Trigger(request.trigger).value,
            owner.pid,
            owner.host,
            owner.started,
        )

    def record_result(
        self, request: ViewRequest, backend: str, finished_at: float, output: dict[str, Any]
    ) -> None:
        """Insert a succeeded row for a result found on disk (``ledger rebuild``)."""
        values = self._row_values(request, backend, RunStatus.SUCCEEDED)

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO runs (scan_folder, view_file, scan_id, scan_dir, recon,"
                " backend, status, trigger, attempt, owner_pid, owner_host, owner_started,"
                " created_at, finished_at, output, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.scan_folder,
                    request.view_file,
                    *values,
                    finished_at,
                    finished_at,
                    json.dumps(output),
                    time.time(),
                ),
            )

        self._write(work)

    # -- recovery ------------------------------------------------------------------------------

    def orphans(self, backend: str) -> list[RunRecord]:
        """Unfinished rows of ``backend`` whose owner process is gone (on this host)."""
        placeholders = ", ".join("?" for _ in _UNFINISHED)
        rows = self._read(
            lambda db: db.execute(
                f"SELECT * FROM runs WHERE backend = ? AND status IN ({placeholders})"
                " ORDER BY scan_id, scan_folder, view_file",
                (backend, *(s.value for s in _UNFINISHED)),
            ).fetchall()
        )
        return [r for r in map(RunRecord.from_row, rows) if not r.owner.alive()]

    def owned_unfinished(self) -> list[RunRecord]:
        """Unfinished rows this process owns (what a cancelled ``run-flow`` must record)."""
        me = self.owner
        placeholders = ", ".join("?" for _ in _UNFINISHED)
        rows = self._read(
            lambda db: db.execute(
                f"SELECT * FROM runs WHERE status IN ({placeholders}) AND owner_pid = ?"
                " AND owner_host = ? AND owner_started IS ?",
                (*(s.value for s in _UNFINISHED), me.pid, me.host, me.started),
            ).fetchall()
        )
        return [RunRecord.from_row(r) for r in rows]

    def take_over(self, record: RunRecord) -> bool:
        """Make this process the owner of an orphaned row; False if someone else did first."""
        me = self.owner

        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE runs SET owner_pid = ?, owner_host = ?, owner_started = ?, updated_at = ?"
                " WHERE scan_folder = ? AND view_file = ? AND status = ? AND attempt = ?"
                " AND owner_pid IS ? AND owner_host IS ? AND owner_started IS ?",
                (
                    me.pid,
                    me.host,
                    me.started,
                    time.time(),
                    record.scan_folder,
                    record.view_file,
                    record.status.value,
                    record.attempt,
                    record.owner.pid,
                    record.owner.host,
                    record.owner.started,
                ),
            )
            return cursor.rowcount == 1

        return self._write(work)

    def restart(self, scan_folder: str, view_file: str) -> None:
        """Reset a row whose run died with its owner to ``pending`` (same row, attempt + 1)."""
        now = time.time()
        self._update(
            scan_folder,
            view_file,
            "status = ?, attempt = attempt + 1, run_id = NULL, web_url = NULL,"
            " submitted_at = NULL, started_at = NULL, finished_at = NULL, stage = NULL,"
            " stage_seconds = '{}', error = NULL, output = NULL, updated_at = ?",
            (RunStatus.PENDING.value, now),
        )

    # -- scans ---------------------------------------------------------------------------------

    def scan_seen(self, folder: str, scan_id: int, *, scan_dir: str | None = None) -> ScanRecord:
        """Record that the launcher is handing this scan folder's views over; returns its
        row with ``scan_dir`` chosen on first sight: ``str(scan_id)``, or the folder's
        name when another folder holds that id already (``scan100`` and ``flyscan100``
        both run: ``recon/100/`` and ``recon/flyscan100/``). ``scan_dir`` forces the
        name (``ledger rebuild``)."""
        now = time.time()
        forced = scan_dir

        def work(db: sqlite3.Connection) -> ScanRecord:
            row = db.execute("SELECT * FROM scans WHERE folder = ?", (folder,)).fetchone()
            scan_dir = forced or (row["scan_dir"] if row is not None else None)
            if scan_dir is None:
                taken = {
                    r[0]
                    for r in db.execute("SELECT scan_dir FROM scans WHERE folder != ?", (folder,))
                }
                scan_dir = next((c for c in (str(scan_id), folder) if c not in taken), None)
                if scan_dir is None:
                    other = db.execute(
                        "SELECT folder FROM scans WHERE scan_dir IN (?, ?)", (str(scan_id), folder)
                    ).fetchall()
                    raise ConfigError(
                        f"{folder}: its result folder names recon/{scan_id} and recon/{folder} "
                        f"are both taken (by {', '.join(r[0] for r in other)}); rename the folder"
                    )
            db.execute(
                "INSERT INTO scans (folder, scan_id, scan_dir, first_seen, status, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (folder) DO UPDATE SET"
                " scan_id = excluded.scan_id, scan_dir = excluded.scan_dir,"
                " status = excluded.status, error = NULL, updated_at = excluded.updated_at",
                (folder, scan_id, scan_dir, now, ScanState.SEEN.value, now),
            )
            record = self._scan(db, folder)
            assert record is not None
            return record

        return self._write(work)

    def scan_submitted(self, folder: str) -> None:
        now = time.time()
        self._write(
            lambda db: db.execute(
                "UPDATE scans SET status = ?, completed_at = ?, updated_at = ? WHERE folder = ?",
                (ScanState.SUBMITTED.value, now, now, folder),
            )
        )

    def scan_failed(self, folder: str, scan_id: int | None, reason: str) -> None:
        """Record that the scan folder as a whole could not be started, and why."""
        now = time.time()
        self._write(
            lambda db: db.execute(
                "INSERT INTO scans (folder, scan_id, first_seen, status, error, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (folder) DO UPDATE SET"
                " status = excluded.status, error = excluded.error,"
                " updated_at = excluded.updated_at",
                (folder, scan_id, now, ScanState.FAILED.value, reason, now),
            )
        )

    def scan(self, folder: str | int) -> ScanRecord | None:
        """The row of a scan folder (by name; an int finds the first folder with that id)."""
        if isinstance(folder, int):
            rows = self._read(
                lambda db: db.execute(
                    "SELECT * FROM scans WHERE scan_id = ? ORDER BY first_seen, folder", (folder,)
                ).fetchall()
            )
            return _scan_record(rows[0]) if rows else None
        return self._read(lambda db: self._scan(db, folder))

    def scans(self) -> list[ScanRecord]:
        """Every scan folder seen, ordered by scan id and folder name."""
        rows = self._read(
            lambda db: db.execute("SELECT * FROM scans ORDER BY scan_id, folder").fetchall()
        )
        return [_scan_record(row) for row in rows]

    # -- queries for ``status`` ----------------------------------------------------------------

    def get(self, scan_folder: str, view_file: str) -> RunRecord | None:
        """The row of one view, by scan folder name and view file name."""
        return self._read(lambda db: self._get(db, scan_folder, view_file))

    def runs(self, scan: str | int | None = None) -> list[RunRecord]:
        """Rows of one scan folder (by name; an int: every folder with that scan id) or of
        all, ordered by scan id, folder and view file name."""
        order = " ORDER BY scan_id, scan_folder, view_file"
        params: tuple[Any, ...]
        if scan is None:
            query, params = "SELECT * FROM runs" + order, ()
        elif isinstance(scan, int):
            query, params = "SELECT * FROM runs WHERE scan_id = ?" + order, (scan,)
        else:
            query, params = "SELECT * FROM runs WHERE scan_folder = ?" + order, (scan,)
        rows = self._read(lambda db: db.execute(query, params).fetchall())
        return [RunRecord.from_row(r) for r in rows]

    def view_files(self, scan_folder: str) -> set[str]:
        """The view file names of a scan folder that have a row."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT view_file FROM runs WHERE scan_folder = ?", (scan_folder,)
            ).fetchall()
        )
        return {row[0] for row in rows}

    def counts(self, scan: str | int | None = None) -> dict[RunStatus, int]:
        """Number of rows per status (every status present, zeros included)."""
        counts = dict.fromkeys(RunStatus, 0)
        for row in self.runs(scan):
            counts[row.status] += 1
        return counts

    def change_marker(self, scan_folder: str | None = None) -> tuple[Any, ...]:
        """A cheap value that changes whenever a row of ``scan_folder`` (or any row)
        changes: row counts and the latest ``updated_at`` of both tables. What a live
        page polls, instead of reading every row (3293 scans took 2.8 s a poll)."""

        def work(db: sqlite3.Connection) -> tuple[Any, ...]:
            if scan_folder is None:
                runs = db.execute("SELECT COUNT(*), MAX(updated_at) FROM runs").fetchone()
                scans = db.execute("SELECT COUNT(*), MAX(updated_at) FROM scans").fetchone()
            else:
                runs = db.execute(
                    "SELECT COUNT(*), MAX(updated_at) FROM runs WHERE scan_folder = ?",
                    (scan_folder,),
                ).fetchone()
                scans = db.execute(
                    "SELECT COUNT(*), MAX(updated_at) FROM scans WHERE folder = ?",
                    (scan_folder,),
                ).fetchone()
            return (*tuple(runs), *tuple(scans))

        result: tuple[Any, ...] = self._read(work)
        return result

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _get(db: sqlite3.Connection, scan_folder: str, view_file: str) -> RunRecord | None:
        row = db.execute(
            "SELECT * FROM runs WHERE scan_folder = ? AND view_file = ?", (scan_folder, view_file)
        ).fetchone()
        return RunRecord.from_row(row) if row else None

    @staticmethod
    def _scan(db: sqlite3.Connection, folder: str) -> ScanRecord | None:
        row = db.execute("SELECT * FROM scans WHERE folder = ?", (folder,)).fetchone()
        return _scan_record(row) if row else None

    def _update(
        self, scan_folder: str, view_file: str, assignments: str, params: tuple[Any, ...]
    ) -> None:
        def work(db: sqlite3.Connection) -> None:
            cursor = db.execute(
                f"UPDATE runs SET {assignments} WHERE scan_folder = ? AND view_file = ?",
                (*params, scan_folder, view_file),
            )
            if cursor.rowcount != 1:
                raise KeyError(f"ledger has no row for {scan_folder}/{view_file}")

        self._write(work)


def open_ledger(config: Config, **kwargs: Any) -> Ledger:
    """The installation's ledger (``config.ledger``), refusing to start afresh when it
    is missing or empty while results exist under ``recon/`` on the acquisition side
    or the (local) compute side (:class:`LedgerLostError`)."""
    roots = [config.acquisition_root / "recon", config.compute_root / "recon"]
    return Ledger(config.ledger, result_roots=roots, **kwargs)


def _is_busy(err: sqlite3.Error) -> bool:
    name = getattr(err, "sqlite_errorname", "")
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in str(err)


def command_of(pid: int) -> str:
    """The command line of ``pid`` (escaped, at most 120 characters), or ``unknown``."""
    try:
        raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "command unknown"
    command = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    command = printable(command) or "command unknown"
    return command if len(command) <= 120 else command[:117] + "..."


def find_results(roots: Iterable[pathlib.Path], limit: int = 1) -> list[pathlib.Path]:
    """Up to ``limit`` result files ``<root>/<scan_dir>/<view>.h5`` under ``roots``."""
    found: list[pathlib.Path] = []
    for root in roots:
        try:
            scan_dirs = sorted(p for p in pathlib.Path(root).iterdir() if p.is_dir())
        except OSError:
            continue
        for scan_dir in scan_dirs:
            try:
                found.extend(sorted(scan_dir.glob("*.h5"))[: limit - len(found)])
            except OSError:
                continue
            if len(found) >= limit:
                return found
    return found


def schema_problems(db: sqlite3.Connection) -> list[str]:
    """What is wrong with the ledger's tables (empty list when nothing is)."""
    problems = []
    for table, expected in EXPECTED_COLUMNS.items():
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not columns:
            problems.append(f"table {table!r} is missing")
        elif expected - columns:
            problems.append(
                f"table {table!r} lacks column(s) {', '.join(sorted(expected - columns))}"
            )
    return problems


#: Columns of ``runs`` added by schema 3 (each NULL or 0 in a migrated row).
_V3_RUN_COLUMNS = (
    ("input_size", "INTEGER"),
    ("input_mtime_ns", "INTEGER"),
    ("input_hash", "TEXT"),
    ("transient_retries", "INTEGER NOT NULL DEFAULT 0"),
    ("submitted_clock", "TEXT"),
)


def _migrate_from_v2(db: sqlite3.Connection) -> None:
    """Schema 3 adds the input fingerprint and the transient-retry count to ``runs``."""
    present = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    for name, kind in _V3_RUN_COLUMNS:
        if name not in present:
            db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate_from_v1(db: sqlite3.Connection) -> None:
    """Schema 1 keyed rows by (scan id, view position); 2 keys them by folder and file."""
    db.execute("ALTER TABLE runs RENAME TO runs_v1")
    db.execute("ALTER TABLE scans RENAME TO scans_v1")
    db.execute("DROP INDEX IF EXISTS runs_by_status")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(
        "INSERT OR IGNORE INTO scans (folder, scan_id, scan_dir, first_seen, completed_at,"
        " status, error, updated_at) SELECT folder, scan_id, CAST(scan_id AS TEXT), first_seen,"
        " completed_at, status, error, updated_at FROM scans_v1"
    )
    v3_only = {name for name, _ in _V3_RUN_COLUMNS}
    columns = ", ".join(sorted(EXPECTED_COLUMNS["runs"] - {"scan_dir"} - v3_only))
    db.execute(
        f"INSERT OR IGNORE INTO runs ({columns}, scan_dir) SELECT {columns},"
        " CAST(scan_id AS TEXT) FROM runs_v1"
    )
    db.execute("DROP TABLE runs_v1")
    db.execute("DROP TABLE scans_v1")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip()
    except OSError:
        return "unknown-boot"


def steady_clock() -> str:
    """Now on a clock no wall-clock change moves: ``<boot id>:<CLOCK_BOOTTIME s>``
    (system-wide, so any process of this host can take a difference from it)."""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return f"{_boot_id()}:{time.clock_gettime(clock):.3f}"


def steady_elapsed(mark: str | None) -> float | None:
    """Seconds since :func:`steady_clock` gave ``mark``; None from another boot (or host
    with another boot id) or for no mark."""
    if not mark or ":" not in mark:
        return None
    boot, _, seconds = mark.rpartition(":")
    if boot != _boot_id():
        return None
    try:
        then = float(seconds)
    except ValueError:
        return None
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return max(0.0, time.clock_gettime(clock) - then)


def _with_other(
    stage_seconds: dict[str, float],
    submitted_at: float | None,
    finished_at: float,
    submitted_clock: str | None = None,
) -> dict[str, float]:
    """``stage_seconds`` plus ``other`` = time since submission minus the stages. The
    time since submission comes from the steady clock when the mark is from this boot
    (a wall-clock jump showed as -3591 s or 86400 s); else from the wall clock, never
    below zero."""
    seconds = {k: float(v) for k, v in stage_seconds.items() if k != "other"}
    elapsed = steady_elapsed(submitted_clock)
    if elapsed is None and submitted_at is not None:
        elapsed = max(0.0, finished_at - submitted_at)
    if elapsed is not None:
        staged = sum(seconds.get(stage, 0.0) for stage in STAGES)
        seconds["other"] = max(0.0, elapsed - staged)
    return seconds


def _scan_record(row: sqlite3.Row) -> ScanRecord:
    return ScanRecord(
        folder=row["folder"],
        scan_id=row["scan_id"],
        scan_dir=row["scan_dir"],
        first_seen=row["first_seen"],
        completed_at=row["completed_at"],
        status=ScanState(row["status"]),
        error=row["error"],
    )
