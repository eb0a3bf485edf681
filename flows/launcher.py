"""Starting runs: the one code path shared by ``run-flow`` and the watcher.

For a scan folder (its name is its key): find its views (each identified by its
file name), create the compute-side folder pair once
(``Backend.prepare_scan``), then for every view: claim it in the ledger
(``pending``), mark it ``submitting``, ask the backend to start it, record the
run id (``active``). A view that is already running or done is skipped; a view
that cannot start (unreadable file, backend error) is recorded as failed with
its reason and the other views go on. Transient backend errors are retried with
exponential backoff for minutes, asking the backend whether the run exists after all
before and after each wait (:data:`DEFAULT_START_RETRY`: a slow 504 may have started
it). When the backend stays unavailable, the view is *deferred*: its row stays
``pending`` (or ``submitting`` when a start was sent), the scan is not marked handed
over, and the next pass (the watcher's, or the next ``run-flow``) takes it up again;
nothing is recorded as failed for an outage.

Runs in flight are polled on a per-run schedule (:attr:`Backend.poll_interval_range_s`:
for Globus every 15 s after a change, backing off to 60 s). A run that cannot be
followed for a reason other than an outage (401, token error, 404 after retention)
becomes ``unknown``: it may still run at Globus, so it is never started again by
itself. INACTIVE and unknown runs do not hold concurrency slots: they use no compute,
and 64 of them must not stop the watcher.

``Launcher.recover`` picks up rows left behind by a process that died (see
:mod:`flows.ledger`); ``Launcher.wait`` polls until a scan's runs have finished.

A ``Launcher`` is used from one thread at a time (the watcher's worker thread,
or ``run-flow``'s main thread).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import pathlib
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from flows.backend import (
    Backend,
    RunProgress,
    RunStatus,
    StartedRun,
    Trigger,
    ViewRequest,
    run_label,
)
from flows.config import Config
from flows.errors import ConfigError, LaunchError, TransientBackendError
from flows.input_fingerprint import InputFingerprint
from flows.ledger import Ledger, RunRecord, ScanState
from flows.scans import (
    ScanNameError,
    Selection,
    choose_views,
    look_alike_problem,
    scan_folder,
    view_files,
    view_key,
)
from flows.transient_failures import MAX_TRANSIENT_RETRIES, retry_due, transient_kind
from recon.cxi import peek_view_shape
from recon.errors import InputError, InputFileNotFound, OptionsError, PtychoflowError

log = logging.getLogger("ptychoflow.launcher")

T = TypeVar("T")


class ViewAction(StrEnum):
    """What ``start_scan`` / ``recover`` did with a view."""

    STARTED = "started"  #: a new run was started
    ADOPTED = "adopted"  #: a run that already existed at the backend was recorded
    SKIPPED = "skipped"  #: the ledger shows it running or done; nothing was started
    FAILED = "failed"  #: it could not be started; ``error`` says why
    INTERRUPTED = "interrupted"  #: a stop was requested before it was reached
    DEFERRED = "deferred"  #: the backend is unavailable; left pending for the next pass


@dataclasses.dataclass(frozen=True)
class ViewOutcome:
    """The result of handing one view to the backend."""

    scan_folder: str
    view_file: str
    action: ViewAction
    status: RunStatus | None
    """The ledger status after the action (None when interrupted before claiming)."""
    run_id: str | None = None
    web_url: str | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        """``scan100-view003``: the run label of the view."""
        return run_label(self.scan_folder, self.view_file)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient backend errors: ``first_delay_s * factor**k``
    seconds (capped at ``max_delay_s``) between at most ``attempts`` tries."""

    attempts: int = 5
    first_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 10.0

    def delays(self) -> list[float]:
        """The sleeps between the tries (``attempts - 1`` of them)."""
        return [
            min(self.max_delay_s, self.first_delay_s * self.factor**k)
            for k in range(max(0, self.attempts - 1))
        ]


#: The retry policy of idempotent backend calls (creating folders, searching runs):
#: about three minutes (2, 4, ... 60 s) before the backend counts as unavailable.
DEFAULT_RETRY = RetryPolicy(attempts=8, first_delay_s=2.0, factor=2.0, max_delay_s=60.0)

#: The retry policy of starting a run: a start that timed out (a slow 504) may still
#: create the run at the service, and its run only shows in the run list some time
#: later, so the first re-post waits 30 s, looking for the run before and after each
#: wait; about seven minutes in all (30, 60, 120, 120, 120 s).
DEFAULT_START_RETRY = RetryPolicy(attempts=6, first_delay_s=30.0, factor=2.0, max_delay_s=120.0)


def make_backend(config: Config) -> Backend:
    """The backend ``config.backend`` names, imported only when asked for."""
    if config.backend == "local":
        from flows.local.backend import open_local_backend

        return open_local_backend(config)
    if config.backend == "globus":
        from flows.globus.setup import open_globus_backend

        return open_globus_backend(config, starts_runs=True)
    raise ConfigError(
        f"backend = {config.backend!r} is not known; expected 'local' or 'globus'"
        + (f" (in {config.source})" if config.source else "")
    )


def unknown_run_text(run_id: str, err: BaseException) -> str:
    """What ``status`` says about a run that can no longer be followed."""
    return (
        f"unknown, run still at Globus: cannot follow run {run_id}: {describe_error(err)}; "
        "the run may still be going. Fix: a 401 or token error: put the watcher's current "
        "client secret in its environment and run `ptychoflow login --force`; a 404: the "
        "run is gone (past retention), look for its result; `ptychoflow cancel --scan N "
        "--views V` ends it, after which run-flow may start the view again"
    )


def vanished_reason(scan_path: pathlib.Path, file_name: str, err: BaseException) -> str:
    """Why a listed view cannot be read now: gone (deleted, or its scan folder renamed,
    after the listing) or unreadable (the error itself)."""
    where = f"{scan_path.name}/{file_name}"
    if not scan_path.is_dir():
        return (
            f"{where}: the scan folder {scan_path} disappeared (renamed or deleted) after its "
            "views were listed; this view was not started"
        )
    if not (scan_path / file_name).exists():
        return (
            f"{where}: the view file disappeared (deleted or renamed) after the scan was "
            "listed; it was not started"
        )
    return describe_error(err)


def describe_error(err: BaseException) -> str:
    """A one-line reason for the ledger: our own errors as their message, others with type."""
    if isinstance(err, PtychoflowError):
        return str(err)
    return f"{type(err).__name__}: {err}"


class Launcher:
    """Starts, recovers and follows runs for ``config`` on ``backend``, recording in ``ledger``.

    ``stop_event``: when set, ``start_scan`` finishes the view it is submitting and
    returns; the views it did not reach stay unclaimed (a later start picks them up).
    ``retry``: backoff of idempotent calls; ``start_retry``: backoff of starting a run
    (default :data:`DEFAULT_START_RETRY`, or ``retry`` when only that is given).
    ``clock``: monotonic seconds, for the polling schedule.
    """

    def __init__(
        self,
        config: Config,
        backend: Backend,
        ledger: Ledger,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        start_retry: RetryPolicy | None = None,
        poll_interval_s: float = 1.0,
        stop_event: threading.Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.backend = backend
        self.ledger = ledger
        self.retry = retry
        if start_retry is None:
            start_retry = DEFAULT_START_RETRY if retry is DEFAULT_RETRY else retry
        self.start_retry = start_retry
        self.poll_interval_s = poll_interval_s
        self.stop_event = stop_event or threading.Event()
        self._sleep = sleep
        self._clock = clock
        #: Runs this launcher started or adopted and has not seen finish:
        #: (scan folder, view file) -> run id.
        self.in_flight: dict[tuple[str, str], str] = {}
        self._refresh_pass: collections.deque[tuple[str, str]] = collections.deque()
        #: Views left unsubmitted because the backend was unavailable -> why. Their rows
        #: stay pending/submitting, owned by this process; the next start takes them up.
        self.deferred: dict[tuple[str, str], str] = {}
        #: Set while the backend is unavailable within one ``start_scan`` pass.
        self._outage: str | None = None
        #: Polling schedule: key -> (next poll time, current interval).
        self._next_poll: dict[tuple[str, str], tuple[float, float]] = {}
        #: The last status seen per run in flight (slots count only ACTIVE ones).
        self._last_status: dict[tuple[str, str], RunStatus] = {}

    # -- starting ------------------------------------------------------------------------------

    def start_scan(
        self,
        folder: str,
        *,
        views: Selection | None = None,
        recon_overrides: dict[str, Any] | None = None,
        trigger: Trigger = Trigger.MANUAL,
        force: bool = False,
    ) -> list[ViewOutcome]:
        """Start one run per (selected) view of the scan folder named ``folder``.

        Views already in the ledger as running or done are skipped, so calling it
        again after more view files arrived starts just the new ones. Raises for
        problems of the scan as a whole (missing folder, id too long, no views, bad
        options, compute-side folders not created), after recording them in the
        ledger's ``scans`` table when the folder exists.
        """
        try:
            scan = scan_folder(self.config, folder)
        except ScanNameError as err:
            self.ledger.scan_failed(folder, None, str(err))
            raise
        try:
            files = view_files(self.config, scan.path)
        except InputError as err:
            self.ledger.scan_failed(folder, scan.scan_id, str(err))
            raise
        recon = self.config.recon.replace(**(recon_overrides or {})).to_dict()
        selected = files if views is None else choose_views(files, views, folder)
        try:
            scan_dir = self.ledger.scan_seen(folder, scan.scan_id).scan_dir
        except ConfigError as err:
            self.ledger.scan_failed(folder, scan.scan_id, str(err))
            raise
        assert scan_dir is not None
        log.info("%s: %d view(s) to hand over", folder, len(selected))
        # Two view files with one name (view003.cxi, view003.h5) would share a result.
        first_with_stem: dict[str, str] = {}
        for key in map(view_key, files):
            first_with_stem.setdefault(pathlib.PurePosixPath(key).stem, key)

        outcomes: list[ViewOutcome] = []
        prepared = False
        prepare_error: str | None = None
        self._outage = None  # each pass tries the backend again
        for file_name in selected:
            request = ViewRequest(
                scan_id=scan.scan_id,
                view_file=view_key(file_name),
                scan_folder=folder,
                recon=recon,
                trigger=trigger,
                scan_dir=scan_dir,
            )
            if self.stop_event.is_set():
                outcomes.append(
                    ViewOutcome(folder, request.view_file, ViewAction.INTERRUPTED, None)
                )
                continue
            resumed = (request.scan_folder, request.view_file) in self.deferred
            self.ledger.ensure_space()  # write-ahead: a start that cannot be recorded stops all
            fingerprint = InputFingerprint.of(scan.path / file_name)
            previous = self.ledger.get(folder, request.view_file)
            transient_retry = self._retry_due(previous, fingerprint)
            rerun = force or self._changed_since_success(previous, fingerprint)
            if not resumed and not self.ledger.claim(
                request,
                self.backend.name,
                force=rerun,
                fingerprint=fingerprint,
                transient_retry=transient_retry,
            ):
                outcomes.append(self._outcome(request, ViewAction.SKIPPED))
                continue
            if self._outage is not None:
                outcomes.append(self._defer(request, self._outage))
                continue
            if request.view_file != file_name:
                outcomes.append(
                    self._fail(
                        request,
                        f"{folder}/{request.view_file}: the file name is not valid UTF-8, "
                        "which the ledger, the flow input and Globus Transfer need; rename "
                        "the file",
                    )
                )
                continue
            twin = first_with_stem[request.view]
            if twin != request.view_file:
                outcomes.append(
                    self._fail(
                        request,
                        f"{folder}/{file_name}: its result recon/{scan_dir}/{request.view}.h5 "
                        f"would overwrite that of {twin}; rename one of them",
                    )
                )
                continue
            look_alike = look_alike_problem(file_name, files)
            if look_alike is not None:
                outcomes.append(self._fail(request, f"{folder}/{look_alike}"))
                continue
            try:
                label = f"{folder}/{file_name}"
                request = self._inspect_view(request, scan.path / file_name, label)
            except (InputError, InputFileNotFound, OptionsError, OSError) as err:
                outcomes.append(self._fail(request, vanished_reason(scan.path, file_name, err)))
                continue
            if not prepared and prepare_error is None:
                try:
                    self._with_retry(
                        lambda: self.backend.prepare_scan(scan_dir),
                        f"{folder}: creating input/{scan_dir} and recon/{scan_dir}",
                    )
                    prepared = True
                except TransientBackendError as err:  # an outage: try again next pass
                    self._outage = (
                        f"backend {self.backend.name} unavailable while creating "
                        f"input/{scan_dir} and recon/{scan_dir}: {describe_error(err)}"
                    )
                    outcomes.append(self._defer(request, self._outage))
                    continue
                except Exception as err:  # every failure is recorded, none stops the rest
                    prepare_error = (
                        f"{folder}: could not create the compute-side folders "
                        f"input/{scan_dir} and recon/{scan_dir}: {describe_error(err)}"
                    )
                    self.ledger.scan_failed(folder, scan.scan_id, prepare_error)
            if prepare_error is not None:
                outcomes.append(self._fail(request, prepare_error))
                continue
            self._wait_for_slot()
            if self.stop_event.is_set():
                # Claimed but not handed over: left pending for this process to record
                # as cancelled (run-flow) or for the next start to recover (watcher).
                outcomes.append(self._outcome(request, ViewAction.INTERRUPTED))
                continue
            outcomes.append(self._submit(request))
        if prepare_error is not None:
            raise LaunchError(prepare_error)
        if not self.stop_event.is_set() and not any(
            outcome.action is ViewAction.DEFERRED for outcome in outcomes
        ):
            self.ledger.scan_submitted(folder)
        return outcomes

    def _defer(self, request: ViewRequest, reason: str) -> ViewOutcome:
        """Leave a claimed view for the next pass: its row stays pending (submitting when
        a start may have reached the backend), with ``reason`` shown by ``status``."""
        key = (request.scan_folder, request.view_file)
        record = self.ledger.get(*key)
        status = record.status if record is not None else RunStatus.PENDING
        if status not in (RunStatus.PENDING, RunStatus.SUBMITTING):
            status = RunStatus.PENDING
        text = f"{reason}; left {status.value}, tried again on the next pass"
        self.ledger.update_progress(*key, RunProgress(status, error=text))
        self.deferred[key] = text
        log.warning("%s deferred: %s", request.label, text)
        return ViewOutcome(
            request.scan_folder, request.view_file, ViewAction.DEFERRED, status, error=text
        )

    def _inspect_view(self, request: ViewRequest, path: pathlib.Path, label: str) -> ViewRequest:
        """The cheap check before a run is spent on a view: a CXI view's dataset shape; for
        a beamline scan (``[beamline]``), the files its reader needs, which the request
        then names so that the flow copies them (and the settings the compute function
        reads them with). On the local backend the reader must exist here too."""
        settings = self.config.beamline
        if settings is None:
            peek_view_shape(path, label)
            return request
        from recon.beamline import check_readers, transfer_files

        if self.backend.name == "local":
            check_readers(settings)
        files = tuple(transfer_files(path, settings))
        return dataclasses.replace(request, files=files, beamline=settings.to_dict())

    def _retry_due(self, previous: RunRecord | None, current: InputFingerprint | None) -> bool:
        """A failed view whose failure was transient and whose retry is due now."""
        if previous is None or previous.status is not RunStatus.FAILED:
            return False
        due = retry_due(
            error=previous.error,
            retries=previous.transient_retries,
            finished_at=previous.finished_at,
            recorded=previous.input,
            current=current,
            settle_s=self.config.settle_seconds,
        )
        if due:
            log.warning(
                "%s: retrying after a transient failure (%s; automatic retry %d of %d): %s",
                previous.label,
                transient_kind(previous.error),
                previous.transient_retries + 1,
                MAX_TRANSIENT_RETRIES,
                previous.error,
            )
        return due

    def _changed_since_success(
        self, previous: RunRecord | None, current: InputFingerprint | None
    ) -> bool:
        """True when a succeeded view's file now holds other data (a re-acquired view) and
        ``config.rerun_changed_views`` says to run it again; logs a warning either way."""
        if previous is None or previous.status is not RunStatus.SUCCEEDED:
            return False
        if previous.input is None or current is None or previous.input.same_content(current):
            return False
        rerun = self.config.rerun_changed_views
        log.warning(
            "%s: the view file changed after its result was made (size %d -> %d bytes, "
            "different content): %s",
            previous.label,
            previous.input.size,
            current.size,
            "running it again (rerun_changed_views = true)"
            if rerun
            else "not run again; run-flow --force, or rerun_changed_views = true, does",
        )
        return rerun

    def views_to_retry(self, folder: str) -> list[str]:
        """View files of the scan folder whose transient failure is due for a retry."""
        due = []
        for row in self.ledger.runs(folder):
            if row.status is RunStatus.FAILED and transient_kind(row.error):
                current = InputFingerprint.of(self.config.acquisition_root / folder / row.view_file)
                if self._retry_due(row, current):
                    due.append(row.view_file)
        return due

    def _submit(self, request: ViewRequest) -> ViewOutcome:
        """Hand a claimed (pending) request to the backend and record the result.

        Write-ahead: the row says ``submitting`` before the backend is asked, so a start
        whose ``active`` cannot be recorded (the disk filled meanwhile) is still found by
        recovery (adopted by label where runs outlive us). A ledger that cannot be written
        (:class:`~flows.errors.LedgerUnwritableError`) ends the scan here: nothing more
        is started."""
        self.ledger.ensure_space()
        key = (request.scan_folder, request.view_file)
        before = self.ledger.get(*key)
        sent_before = before is not None and before.status is RunStatus.SUBMITTING
        self.ledger.mark_submitting(request.scan_folder, request.view_file)
        claimed = self.ledger.get(request.scan_folder, request.view_file)
        if claimed is not None and claimed.attempt != request.attempt:
            request = dataclasses.replace(request, attempt=claimed.attempt)  # tagged on the run
        adopted: list[StartedRun] = []

        def look(_err: TransientBackendError | None = None) -> StartedRun | None:
            # The request may have reached the backend before the error: look first.
            try:
                existing = self.backend.find_run(request)
            except TransientBackendError:
                return None
            if existing is not None:
                adopted.append(existing)
            return existing

        self.deferred.pop(key, None)
        if sent_before:  # an earlier pass sent a start whose answer was lost
            found = look()
            if found is not None:
                return self._record_started(request, found, ViewAction.ADOPTED)
        try:
            started = self._with_retry(
                lambda: self.backend.start_view(request),
                request.label,
                look,
                policy=self.start_retry,
            )
        except TransientBackendError as err:
            self._outage = (
                f"backend {self.backend.name} unavailable for {self.start_retry.attempts} "
                f"attempts: {describe_error(err)}"
            )
            return self._defer(request, self._outage)
        except Exception as err:  # recorded with its reason; other views go on
            return self._fail(request, describe_error(err))
        action = ViewAction.ADOPTED if adopted else ViewAction.STARTED
        return self._record_started(request, started, action)

    def _record_started(
        self, request: ViewRequest, started: StartedRun, action: ViewAction
    ) -> ViewOutcome:
        self.ledger.mark_started(request.scan_folder, request.view_file, started)
        self._follow((request.scan_folder, request.view_file), started.run_id)
        log.info(
            "%s %s: run %s%s",
            request.label,
            action.value,
            started.run_id,
            f" {started.web_url}" if started.web_url else "",
        )
        return ViewOutcome(
            request.scan_folder,
            request.view_file,
            action,
            RunStatus.ACTIVE,
            run_id=started.run_id,
            web_url=started.web_url,
        )

    def _fail(self, request: ViewRequest, reason: str) -> ViewOutcome:
        self.ledger.mark_failed(request.scan_folder, request.view_file, reason)
        log.error("%s failed to start: %s", request.label, reason)
        return ViewOutcome(
            request.scan_folder,
            request.view_file,
            ViewAction.FAILED,
            RunStatus.FAILED,
            error=reason,
        )

    def _outcome(self, request: ViewRequest, action: ViewAction) -> ViewOutcome:
        record = self.ledger.get(request.scan_folder, request.view_file)
        assert record is not None
        return ViewOutcome(
            request.scan_folder,
            request.view_file,
            action,
            record.status,
            run_id=record.run_id,
            web_url=record.web_url,
            error=record.error,
        )

    def _with_retry(
        self,
        call: Callable[[], T],
        what: str,
        instead_of_retry: Callable[[TransientBackendError], T | None] | None = None,
        *,
        policy: RetryPolicy | None = None,
    ) -> T:
        """``call()``, retried with backoff on :class:`TransientBackendError` (the one retry
        loop of the launcher). Before and after each wait ``instead_of_retry(err)`` may
        return a value to use instead (e.g. a run found to exist after all: one looked
        for just after a timeout may not be listed yet). The last error is raised when
        every attempt failed."""
        delays = (policy or self.retry).delays()
        for attempt in range(len(delays) + 1):
            try:
                return call()
            except TransientBackendError as err:
                if instead_of_retry is not None:
                    found = instead_of_retry(err)
                    if found is not None:
                        return found
                if attempt == len(delays):
                    raise
                log.warning(
                    "%s: transient backend error (%s); retrying in %.1f s",
                    what,
                    err,
                    delays[attempt],
                )
                self._sleep(delays[attempt])
                if instead_of_retry is not None:
                    found = instead_of_retry(err)
                    if found is not None:
                        return found
        raise AssertionError("unreachable")

    def slots_taken(self) -> int:
        """Runs in flight that hold a concurrency slot: all but INACTIVE and unknown ones
        (they use no compute while they wait for a person; see the module docstring)."""
        idle = (RunStatus.INACTIVE, RunStatus.UNKNOWN)
        return sum(1 for key in self.in_flight if self._last_status.get(key) not in idle)

    def _wait_for_slot(self) -> None:
        """Block until fewer than ``config.concurrency`` runs hold a slot."""
        while self.slots_taken() >= self.config.concurrency and not self.stop_event.is_set():
            self.refresh()
            if self.slots_taken() >= self.config.concurrency:
                self._sleep(self.poll_interval_s)

    # -- following -----------------------------------------------------------------------------

    def refresh(self, max_seconds: float | None = None) -> bool:
        """Poll runs in flight and record their progress; True when a full pass is done.

        With ``max_seconds`` the pass stops after that long and the next call goes
        on where it stopped (round robin), so a caller with other duties (the
        watcher) is never blocked for long by many runs in flight.
        """
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        if not self._refresh_pass:
            self._refresh_pass.extend(self.in_flight)
        while self._refresh_pass:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            key = self._refresh_pass.popleft()
            run_id = self.in_flight.get(key)
            if run_id is None or not self._due(key):
                continue
            self._poll_and_record(key, run_id)
        return True

    def _follow(self, key: tuple[str, str], run_id: str) -> None:
        """Start following a run: first poll after the shortest interval."""
        self.in_flight[key] = run_id
        self._last_status[key] = RunStatus.ACTIVE
        first = self.backend.poll_interval_range_s[0]
        self._next_poll[key] = (self._clock() + first, first)

    def _due(self, key: tuple[str, str]) -> bool:
        """True when the run's next poll is due (always on backends with no schedule)."""
        when = self._next_poll.get(key)
        return when is None or self._clock() >= when[0]

    def _schedule(self, key: tuple[str, str], changed: bool) -> None:
        """The next poll: the shortest interval after a change, else twice the last one
        (at most the longest)."""
        shortest, longest = self.backend.poll_interval_range_s
        _, interval = self._next_poll.get(key, (0.0, shortest))
        interval = shortest if changed else min(longest, max(shortest, 2 * interval))
        self._next_poll[key] = (self._clock() + interval, interval)

    def _poll_and_record(self, key: tuple[str, str], run_id: str) -> RunRecord | None:
        """Poll one run, record what changed, log the changes a person must see."""
        before = self.ledger.get(*key)
        progress = self._poll(*key, run_id)
        if progress is None:
            self._schedule(key, changed=False)
            return None
        record = self.ledger.update_progress(*key, progress)
        previous = before.status if before is not None else None
        changed = previous is not record.status or (
            before is not None and before.stage != record.stage
        )
        self._last_status[key] = record.status
        if record.status.terminal:
            self.in_flight.pop(key, None)
            self._next_poll.pop(key, None)
            self._last_status.pop(key, None)
            log.info(
                "%s %s%s",
                record.label,
                record.status.value,
                f": {record.error}" if record.error else "",
            )
            return record
        if record.status is not previous and record.status in (
            RunStatus.INACTIVE,
            RunStatus.UNKNOWN,
        ):
            log.warning(
                "%s is %s (run %s%s): %s",
                record.label,
                record.status.value,
                run_id,
                f", {record.web_url}" if record.web_url else "",
                record.error,
            )
        elif previous in (RunStatus.INACTIVE, RunStatus.UNKNOWN) and record.status is not previous:
            log.warning("%s is %s again (run %s)", record.label, record.status.value, run_id)
        self._schedule(key, changed)
        return record

    def _poll(self, scan_folder: str, view_file: str, run_id: str) -> RunProgress | None:
        try:
            return self.backend.poll(run_id)
        except TransientBackendError as err:
            log.warning("%s/%s: poll of run %s failed (%s)", scan_folder, view_file, run_id, err)
            return None
        except Exception as err:
            if self.backend.runs_die_with_owner:  # a local run that cannot be read is lost
                return RunProgress(
                    RunStatus.FAILED, error=f"cannot follow run {run_id}: {describe_error(err)}"
                )
            # The run lives at the service and may still be running there: never "failed",
            # which a later run-flow would start again (twice).
            return RunProgress(RunStatus.UNKNOWN, error=unknown_run_text(run_id, err))

    def wait(
        self,
        folder: str,
        progress_callback: Callable[[list[RunRecord]], None] | None = None,
        poll_interval_s: float | None = None,
        timeout_s: float | None = None,
    ) -> list[RunRecord]:
        """Poll until every ledger row of the scan folder is finished (or ``stop_event``
        is set); returns the rows.

        Rows started by another process are polled too when the backend's runs
        outlive their starter (Globus); otherwise their owner's updates are read.
        ``progress_callback(rows)`` is called after every round.
        """
        interval = self.poll_interval_s if poll_interval_s is None else poll_interval_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        shared = not self.backend.runs_die_with_owner
        while True:
            self.refresh()
            rows = self.ledger.runs(folder)
            for row in rows:
                key = row.key
                if (
                    shared
                    and row.status in (RunStatus.ACTIVE, RunStatus.INACTIVE, RunStatus.UNKNOWN)
                    and row.run_id
                    and key not in self.in_flight
                    and row.backend == self.backend.name
                    and self._due(key)
                ):
                    self._poll_and_record(key, row.run_id)
            rows = self.ledger.runs(folder)
            if progress_callback is not None:
                progress_callback(rows)
            if (
                all(row.status.terminal or row.key in self.deferred for row in rows)
                or self.stop_event.is_set()
            ):
                return rows
            if deadline is not None and time.monotonic() > deadline:
                unfinished = [r.label for r in rows if not r.status.terminal]
                raise TimeoutError(f"runs still unfinished after {timeout_s} s: {unfinished}")
            waiting_on = next(iter(self.in_flight.values()), None)
            if (
                waiting_on is not None
                and self.backend.runs_die_with_owner  # told when a run ends; Globus polls
                and self._sleep is time.sleep  # not when a test injects sleep
            ):
                # Returns as soon as that run ends on backends that are told (local).
                try:
                    self.backend.wait(waiting_on, interval)
                except Exception:
                    self._sleep(interval)
            else:
                self._sleep(interval)

    # -- recovery ------------------------------------------------------------------------------

    def recover(self) -> list[ViewOutcome]:
        """Pick up unfinished ledger rows whose owner process died (on this host).

        - ``pending``: the backend was never asked -> start it.
        - ``submitting``: the backend may have accepted it -> adopt the run
          ``find_run`` returns, else start it.
        - ``active`` on a backend whose runs die with their process (local) ->
          restart it (same row, attempt + 1); otherwise keep following it.
        """
        outcomes: list[ViewOutcome] = []
        for record in self.ledger.orphans(self.backend.name):
            if self.stop_event.is_set():
                break
            self.ledger.ensure_space()
            if not self.ledger.take_over(record):
                continue  # another process recovered it first
            request = record.request()
            log.info(
                "recovering %s (%s, attempt %d, owner pid %d gone)",
                record.label,
                record.status.value,
                record.attempt,
                record.owner.pid,
            )
            if record.status in (RunStatus.ACTIVE, RunStatus.INACTIVE, RunStatus.UNKNOWN):
                if self.backend.runs_die_with_owner:
                    self.ledger.restart(*record.key)
                else:
                    assert record.run_id is not None
                    self._follow(record.key, record.run_id)
                    self._last_status[record.key] = record.status
                    outcomes.append(self._outcome(request, ViewAction.ADOPTED))
                    continue
            elif record.status is RunStatus.SUBMITTING:
                try:
                    existing = self._with_retry(
                        functools.partial(self.backend.find_run, request),
                        f"{request.label}: find_run",
                    )
                except TransientBackendError as err:  # an outage: look again next pass
                    outcomes.append(
                        self._defer(
                            request,
                            f"backend {self.backend.name} unavailable while looking for "
                            f"its run: {describe_error(err)}",
                        )
                    )
                    continue
                except Exception as err:
                    outcomes.append(self._fail(request, describe_error(err)))
                    continue
                if existing is not None:
                    outcomes.append(self._record_started(request, existing, ViewAction.ADOPTED))
                    continue
            if self.config.beamline is not None:  # the files to copy are not in the ledger
                path = self.config.acquisition_root / record.scan_folder / record.view_file
                try:
                    request = self._inspect_view(request, path, record.label)
                except (InputError, InputFileNotFound, OptionsError) as err:
                    outcomes.append(self._fail(request, str(err)))
                    continue
            self._wait_for_slot()
            outcomes.append(self._submit(request))
        return outcomes

    def scan_handed_over(self, folder: str) -> bool:
        """True when the scan folder needs nothing more: the ledger shows it handed over
        (or failed as a whole) and every view file now in it has a ledger row. A view
        file that arrived after the scan was started makes it False again, so the
        watcher hands the scan over once more and just the new view starts."""
        if any(key[0] == folder for key in self.deferred):
            return False  # views left for the next pass (the backend was unavailable)
        record = self.ledger.scan(folder)
        if record is None or record.status is ScanState.SEEN:
            return False
        if record.scan_id is None:
            return True  # its name was refused; renaming the folder makes a new scan
        try:
            files = view_files(self.config, self.config.acquisition_root / folder)
        except InputError:
            return record.status is ScanState.FAILED  # still no views: nothing new
        if not {view_key(name) for name in files} <= self.ledger.view_files(folder):
            return False
        return not self.views_to_retry(folder)

    # -- cancelling ----------------------------------------------------------------------------

    def cancel_unfinished(self, reason: str) -> list[RunRecord]:
        """Record this process's unfinished views as cancelled (``reason``, e.g.
        ``cancelled by SIGTERM``) after a stop was requested; returns them.

        On a backend whose runs die with this process (local) every unfinished row is
        cancelled. Otherwise (Globus) runs accepted by the service go on without us:
        only views never handed over (``pending``) are cancelled; ``submitting`` and
        ``active`` rows stay for ``status`` and recovery to follow.
        """
        cancelled = []
        for record in self.ledger.owned_unfinished():
            if not self.backend.runs_die_with_owner and record.status is not RunStatus.PENDING:
                continue
            if self.ledger.mark_cancelled(*record.key, reason):
                self.in_flight.pop(record.key, None)
                cancelled.append(record)
                log.warning("%s %s", record.label, reason)
        return cancelled
