"""Everything the portal reads from the run ledger, in one place, read-only.

The ledger is read through its own API, :class:`flows.ledger.Ledger` opened with
``read_only=True`` (a read-only SQLite URI): the portal never writes it and never
creates it (a missing ledger reads as "no runs yet"), and it sees the same
records ``status`` sees.

A scan is addressed by its folder name (``scan100``), a view by its file name's
stem (``view003``): the URL's words are only ever compared with ledger values.
Result files are found from the ledger row (``<acquisition root>/recon/<scan>/``
``<view>.h5``) and served only when they resolve inside the configured roots.

This module is the only one that knows the ledger's layout; when the ledger's
API changes, adapt it here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib
import statistics
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from flows.backend import STAGES, RunStatus
from flows.errors import LedgerError
from flows.ledger import Ledger, RunRecord, ScanRecord

log = logging.getLogger("ptychoflow.portal")

#: Portal view states, in display order, and the ledger statuses each one covers.
#: An inactive run (waiting for a person's consent) shows as running with its reason; a
#: cancelled one (stopped by a signal; started again next time) as failed with its reason.
STATES: dict[str, tuple[RunStatus, ...]] = {
    "queued": (RunStatus.PENDING, RunStatus.SUBMITTING),
    "running": (RunStatus.ACTIVE, RunStatus.INACTIVE, RunStatus.UNKNOWN),
    "succeeded": (RunStatus.SUCCEEDED,),
    "failed": (RunStatus.FAILED, RunStatus.CANCELLED),
}
#: Stages shown per view: the flow's three plus everything else.
STAGE_COLUMNS = (*STAGES, "other")


def state_of(status: RunStatus) -> str:
    """The portal state (queued / running / succeeded / failed) of a ledger status."""
    for state, statuses in STATES.items():
        if status in statuses:
            return state
    raise ValueError(f"unknown run status {status!r}")


@dataclasses.dataclass(frozen=True)
class ViewRow:
    """One view as the portal shows it (one ledger row)."""

    scan_folder: str
    scan_id: int | None
    scan_dir: str
    """The folder name under ``recon/`` (the scan id, or the folder's name when another
    folder has that id); empty for rows written before the ledger recorded it."""
    view_name: str
    """The view file's stem, e.g. ``view003``: the view's name in URLs."""
    view_file: str
    state: str
    stage: str | None
    stage_seconds: dict[str, float]
    error: str | None
    web_url: str | None
    """Link to the run in the Globus web app (https links only; None otherwise)."""
    backend: str
    run_id: str | None
    attempt: int
    created_at: float
    submitted_at: float | None
    finished_at: float | None
    updated_at: float
    recon: dict[str, Any]
    output: dict[str, Any] | None
    status: str = ""
    """The ledger status; ``inactive`` (waits for a person) and ``unknown`` (cannot be
    followed, may still run at Globus) are shown beside the state with the reason."""

    @property
    def label(self) -> str:
        return f"{self.scan_folder}/{self.view_name}"

    @property
    def progress(self) -> dict[str, Any] | None:
        """What the solver reported last while this view computes on the local backend
        (``iteration``, ``iterations``, ``cost``, ``elapsed``, ``eta`` in seconds,
        ``image`` and ``image_iteration`` when an intermediate phase image exists; see
        ``recon.progress``), or None."""
        if self.state != "running" or self.stage != "compute":
            return None
        progress = (self.output or {}).get("progress")
        if not isinstance(progress, dict) or not isinstance(progress.get("iteration"), int):
            return None
        return progress

    def in_stage(self, now: float) -> float | None:
        """Seconds in the current stage so far (while it runs): the time since submission
        less the finished stages."""
        if self.stage is None or self.finished_at is not None:
            return None
        start = self.submitted_at or self.created_at
        return max(0.0, now - start - sum(self.stage_seconds.values()))

    def elapsed(self, now: float) -> float | None:
        """Seconds from submission to completion (or to now while it runs)."""
        start = self.submitted_at or self.created_at
        end = self.finished_at if self.finished_at is not None else now
        return max(0.0, end - start)


@dataclasses.dataclass(frozen=True)
class ScanRow:
    """One scan: its views' states counted, when it started, how long it took so far."""

    folder: str
    scan_id: int | None
    counts: dict[str, int]
    """Views per portal state (every state present)."""
    started: float
    finished: float | None
    """When the last view finished, once every view has; None while any is unfinished."""
    median_stage_seconds: dict[str, float]
    """Median seconds per stage over the scan's finished views (stages seen only)."""
    error: str | None
    """Why the scan as a whole failed (no views, unreadable folder), if it did."""
    newest_result: ViewRow | None = None
    """The succeeded view that finished last (its thumbnail shows in the scans list)."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def elapsed(self, now: float) -> float:
        return max(0.0, (self.finished if self.finished is not None else now) - self.started)

    def has_state(self, state: str) -> bool:
        if state == "failed" and self.error:
            return True
        return self.counts.get(state, 0) > 0


def _first(record: Any, names: Sequence[str], default: Any = None) -> Any:
    """The first of ``names`` that ``record`` has (field names differ between versions)."""
    for name in names:
        if hasattr(record, name):
            return getattr(record, name)
    return default


def _view_row(record: RunRecord) -> ViewRow:
    view_file = str(_first(record, ("view_file",), "") or "")
    view_name = pathlib.PurePosixPath(view_file).stem if view_file else ""
    if not view_name:
        view_name = f"view{int(_first(record, ('view',), 0)):03d}"
    scan_id = _first(record, ("scan_id",))
    folder = str(_first(record, ("scan_folder",), "") or (f"scan{scan_id}"))
    web_url = record.web_url if record.web_url and record.web_url.startswith("https://") else None
    return ViewRow(
        scan_folder=folder,
        scan_id=int(scan_id) if scan_id is not None else None,
        scan_dir=str(_first(record, ("scan_dir",), "") or ""),
        view_name=view_name,
        view_file=view_file,
        state=state_of(record.status),
        stage=None if record.status.terminal else record.stage,
        stage_seconds={str(k): float(v) for k, v in (record.stage_seconds or {}).items()},
        error=record.error,
        web_url=web_url,
        backend=record.backend,
        run_id=record.run_id,
        attempt=record.attempt,
        created_at=record.created_at,
        submitted_at=record.submitted_at,
        finished_at=record.finished_at,
        updated_at=record.updated_at,
        recon=dict(record.recon or {}),
        output=record.output,
        status=record.status.value,
    )


class LedgerReader:
    """Read-only access to the ledger at ``path`` through :class:`flows.ledger.Ledger`
    opened with ``read_only=True`` (it never creates the file and refuses writes).

    The ledger is opened on first use once the file exists, so a portal started before
    the first run shows "no scans yet" and then the scans as they come."""

    def __init__(self, path: pathlib.Path | str) -> None:
        self.path = pathlib.Path(path)
        self._ledger: Ledger | None = None
        self._lock = threading.Lock()
        #: Why the ledger cannot be read right now (damaged, unreadable, an older schema),
        #: shown on the pages instead of "no scans yet"; None when it reads fine.
        self.problem: str | None = None

    def _open(self) -> Ledger | None:
        with self._lock:
            if self._ledger is None and self.path.is_file():
                try:
                    self._ledger = Ledger(self.path, read_only=True)
                except LedgerError as err:
                    self._set_problem(err)
                    return None
            return self._ledger

    def _set_problem(self, err: LedgerError) -> None:
        try:
            fresh = self.path.stat().st_size == 0  # being created right now: no schema yet
        except OSError:
            fresh = False
        if fresh:
            return
        if self.problem != str(err):
            log.warning("portal: cannot read the ledger: %s", err)
        self.problem = str(err)

    def _read(self, work: Any) -> Any:
        """``work(ledger)``, or None when the ledger is missing or cannot be read (the
        reason kept in :attr:`problem`; the ledger is opened again on the next call)."""
        ledger = self._open()
        if ledger is None:
            return None
        try:
            result = work(ledger)
        except LedgerError as err:
            self._set_problem(err)
            self.close()
            return None
        self.problem = None
        return result

    def close(self) -> None:
        with self._lock:
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None

    # -- views ---------------------------------------------------------------------------------

    def _records(self, scan_folder: str | None = None) -> list[RunRecord]:
        records = self._read(lambda ledger: ledger.runs(scan_folder))
        return [] if records is None else list(records)

    def views(self, scan_folder: str | None = None) -> list[ViewRow]:
        """Views of one scan folder (or all), in view-file order."""
        views = [_view_row(record) for record in self._records(scan_folder)]
        views.sort(key=lambda v: (v.scan_folder, v.view_file or v.view_name))
        return views

    def view(self, scan_folder: str, view_name: str) -> ViewRow | None:
        for view in self.views(scan_folder):
            if view.view_name == view_name:
                return view
        return None

    # -- scans ---------------------------------------------------------------------------------

    def _scan_records(self) -> list[ScanRecord]:
        records = self._read(lambda ledger: ledger.scans())
        return [] if records is None else list(records)

    def scans(self) -> list[ScanRow]:
        """Every scan, newest first (by when it was first seen)."""
        by_folder: dict[str, list[ViewRow]] = {}
        for view in self.views():
            by_folder.setdefault(view.scan_folder, []).append(view)
        records = {record.folder: record for record in self._scan_records()}
        folders = set(by_folder) | set(records)
        scans = [self._scan_row(f, by_folder.get(f, []), records.get(f)) for f in folders]
        scans.sort(key=lambda s: (s.started, s.scan_id or 0, s.folder), reverse=True)
        return scans

    def scan(self, folder: str) -> ScanRow | None:
        views = self.views(folder)
        record = self._read(lambda ledger: ledger.scan(folder))
        if not views and record is None:
            return None
        return self._scan_row(folder, views, record)

    @staticmethod
    def _scan_row(folder: str, views: list[ViewRow], record: ScanRecord | None) -> ScanRow:
        counts = dict.fromkeys(STATES, 0)
        for view in views:
            counts[view.state] += 1
        starts = [v.created_at for v in views]
        scan_id: int | None = views[0].scan_id if views else None
        error = None
        if record is not None:
            starts.append(record.first_seen)
            if scan_id is None:
                scan_id = record.scan_id
            error = record.error
        finished = None
        if views and all(v.finished_at is not None for v in views):
            finished = max(float(v.finished_at or 0.0) for v in views)
        elif not views and record is not None:
            finished = record.completed_at or record.first_seen
        medians = {}
        for stage in STAGE_COLUMNS:
            values = [
                v.stage_seconds[stage]
                for v in views
                if v.finished_at is not None and stage in v.stage_seconds
            ]
            if values:
                medians[stage] = float(statistics.median(values))
        succeeded = [v for v in views if v.state == "succeeded"]
        newest = max(succeeded, key=lambda v: v.finished_at or 0.0) if succeeded else None
        return ScanRow(
            folder=folder,
            scan_id=scan_id,
            counts=counts,
            started=min(starts) if starts else time.time(),
            finished=finished,
            median_stage_seconds=medians,
            error=error,
            newest_result=newest,
        )

    # -- change detection ----------------------------------------------------------------------

    def signature(self, scan_folder: str | None = None) -> str:
        """A short string that changes whenever the rows shown for ``scan_folder`` (or for
        every scan) change: what a live page compares to know it must refresh. Made from
        row counts and the latest update time (:meth:`flows.ledger.Ledger.change_marker`),
        not from every row, so an unchanged poll costs two small queries."""
        marker = self._read(lambda ledger: ledger.change_marker(scan_folder))
        parts: list[Any] = [str(self.path), self.problem, marker]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


# -- result files -----------------------------------------------------------------------------


class Roots:
    """The folders files may be served from (resolved once)."""

    def __init__(self, roots: Iterable[pathlib.Path]) -> None:
        self.roots = tuple(pathlib.Path(root).resolve() for root in roots)

    def contains(self, path: pathlib.Path) -> bool:
        resolved = path.resolve()
        return any(resolved.is_relative_to(root) for root in self.roots)


def result_candidates(view: ViewRow, acquisition_root: pathlib.Path) -> list[pathlib.Path]:
    """Where the view's result file may be, most likely first: results come back to
    ``<acquisition root>/recon/<scan folder or id>/<view>.h5``; the compute function's
    own output path (the local backend's compute side) last."""
    recon = acquisition_root / "recon"
    names = [view.scan_dir] if view.scan_dir else []
    names.append(view.scan_folder)
    if view.scan_id is not None:
        names.append(str(view.scan_id))
    candidates = [recon / name / f"{view.view_name}.h5" for name in names]
    output = (view.output or {}).get("output")
    if isinstance(output, str) and output:
        candidates.append(pathlib.Path(output))
    return candidates


def find_result(view: ViewRow, acquisition_root: pathlib.Path, roots: Roots) -> pathlib.Path | None:
    """The view's result file, resolved, if it exists inside ``roots``; else None.

    The file name comes from the ledger row, never from a URL; a name that escapes
    the roots (``..``, a symbolic link pointing elsewhere) is not served.
    """
    if view.state != "succeeded":
        return None
    for candidate in result_candidates(view, acquisition_root):
        if "/" in view.view_name or view.view_name in ("", ".", ".."):
            return None
        try:
            if candidate.is_file() and roots.contains(candidate):
                return candidate.resolve()
        except OSError:
            continue
    return None
