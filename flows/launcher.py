"""Starting runs: the one code path shared by ``run-flow`` and the watcher.

For a scan: find its folder and views, create the compute-side folder pair once
(``Backend.prepare_scan``), then for every view: claim it in the ledger
(``pending``), mark it ``submitting``, ask the backend to start it, record the
run id (``active``). A view that is already running or done is skipped; a view
that cannot start (unreadable file, backend error) is recorded as failed with
its reason and the other views go on. Transient backend errors are retried with
exponential backoff, asking the backend first whether the run exists after all.

``Launcher.recover`` picks up rows left behind by a process that died (see
:mod:`flows.ledger`); ``Launcher.wait`` polls until a scan's runs have finished.

A ``Launcher`` is used from one thread at a time (the watcher's worker thread,
or ``run-flow``'s main thread).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from flows.backend import Backend, RunProgress, RunStatus, StartedRun, Trigger, ViewRequest
from flows.config import Config
from flows.errors import ConfigError, LaunchError, TransientBackendError
from flows.ledger import Ledger, RunRecord, ScanState
from flows.scans import discover_views
from recon.cxi import peek_view_shape
from recon.errors import InputError, PtychoflowError

log = logging.getLogger("ptychoflow.launcher")

T = TypeVar("T")


class ViewAction(StrEnum):
    """What ``start_scan`` / ``recover`` did with a view."""

    STARTED = "started"  #: a new run was started
    ADOPTED = "adopted"  #: a run that already existed at the backend was recorded
    SKIPPED = "skipped"  #: the ledger shows it running or done; nothing was started
    FAILED = "failed"  #: it could not be started; ``error`` says why
    INTERRUPTED = "interrupted"  #: a stop was requested before it was reached


@dataclasses.dataclass(frozen=True)
class ViewOutcome:
    """The result of handing one view to the backend."""

    scan_id: int
    view: int
    view_file: str
    action: ViewAction
    status: RunStatus | None
    """The ledger status after the action (None when interrupted before claiming)."""
    run_id: str | None = None
    web_url: str | None = None
    error: str | None = None


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


#: The retry policy used unless one is given.
DEFAULT_RETRY = RetryPolicy()


def make_backend(config: Config) -> Backend:
    """The backend ``config.backend`` names, imported only when asked for."""
    if config.backend == "local":
        from flows.local.backend import open_local_backend

        return open_local_backend(config)
    if config.backend == "globus":
        from flows.globus.setup import open_globus_backend

        return open_globus_backend(config)
    raise ConfigError(
        f"backend = {config.backend!r} is not known; expected 'local' or 'globus'"
        + (f" (in {config.source})" if config.source else "")
    )


def describe_error(err: BaseException) -> str:
    """A one-line reason for the ledger: our own errors as their message, others with type."""
    if isinstance(err, PtychoflowError):
        return str(err)
    return f"{type(err).__name__}: {err}"


class Launcher:
    """Starts, recovers and follows runs for ``config`` on ``backend``, recording in ``ledger``.

    ``stop_event``: when set, ``start_scan`` finishes the view it is submitting and
    returns; the views it did not reach stay unclaimed (a later start picks them up).
    """

    def __init__(
        self,
        config: Config,
        backend: Backend,
        ledger: Ledger,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        poll_interval_s: float = 1.0,
        stop_event: threading.Event | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.config = config
        self.backend = backend
        self.ledger = ledger
        self.retry = retry
        self.poll_interval_s = poll_interval_s
        self.stop_event = stop_event or threading.Event()
        self._sleep = sleep
        #: Runs this launcher started or adopted and has not seen finish: (scan, view) -> run id.
        self.in_flight: dict[tuple[int, int], str] = {}
        self._refresh_pass: collections.deque[tuple[int, int]] = collections.deque()

    # -- starting ------------------------------------------------------------------------------

    def start_scan(
        self,
        scan_id: int,
        *,
        views: list[int] | None = None,
        recon_overrides: dict[str, Any] | None = None,
        trigger: Trigger = Trigger.MANUAL,
        force: bool = False,
    ) -> list[ViewOutcome]:
        """Start one run per (selected) view of ``scan_id``; see the module docstring.

        Raises for problems of the scan as a whole (missing folder, no views, bad
        options, compute-side folders not created), after recording them in the
        ledger's ``scans`` table when the folder exists.
        """
        try:
            folder, all_views = discover_views(self.config, scan_id)
        except InputError as err:
            # The folder exists but holds no views (or the id is ambiguous): record it.
            self.ledger.scan_failed(scan_id, f"scan{scan_id}", str(err))
            raise
        recon = self.config.recon.replace(**(recon_overrides or {})).to_dict()
        selected = all_views
        if views is not None:
            available = {index for index, _ in all_views}
            missing = sorted(set(views) - available)
            if missing:
                raise InputError(
                    f"{folder}: no view(s) {', '.join(map(str, missing))}; "
                    f"this scan has views 0-{len(all_views) - 1}"
                )
            selected = [(i, name) for i, name in all_views if i in set(views)]
        self.ledger.scan_seen(scan_id, folder.name)
        log.info("scan %d (%s): %d view(s) to hand over", scan_id, folder.name, len(selected))

        outcomes: list[ViewOutcome] = []
        prepared = False
        prepare_error: str | None = None
        for index, file_name in selected:
            request = ViewRequest(
                scan_id=scan_id,
                view=index,
                view_file=file_name,
                scan_folder=folder.name,
                recon=recon,
                trigger=trigger,
            )
            if self.stop_event.is_set():
                outcomes.append(
                    ViewOutcome(scan_id, index, file_name, ViewAction.INTERRUPTED, None)
                )
                continue
            if not self.ledger.claim(request, self.backend.name, force=force):
                outcomes.append(self._outcome(request, ViewAction.SKIPPED))
                continue
            try:
                peek_view_shape(folder / file_name, f"{folder.name}/{file_name}")
            except InputError as err:
                outcomes.append(self._fail(request, str(err)))
                continue
            if not prepared and prepare_error is None:
                try:
                    self._with_retry(
                        lambda: self.backend.prepare_scan(scan_id),
                        f"scan {scan_id}: creating input/{scan_id} and recon/{scan_id}",
                    )
                    prepared = True
                except Exception as err:  # every failure is recorded, none stops the rest
                    prepare_error = (
                        f"scan {scan_id}: could not create the compute-side folders "
                        f"input/{scan_id} and recon/{scan_id}: {describe_error(err)}"
                    )
                    self.ledger.scan_failed(scan_id, folder.name, prepare_error)
            if prepare_error is not None:
                outcomes.append(self._fail(request, prepare_error))
                continue
            self._wait_for_slot()
            outcomes.append(self._submit(request))
        if prepare_error is not None:
            raise LaunchError(prepare_error)
        if not self.stop_event.is_set():
            self.ledger.scan_submitted(scan_id)
        return outcomes

    def _submit(self, request: ViewRequest) -> ViewOutcome:
        """Hand a claimed (pending) request to the backend and record the result."""
        self.ledger.mark_submitting(request.scan_id, request.view)
        claimed = self.ledger.get(request.scan_id, request.view)
        if claimed is not None and claimed.attempt != request.attempt:
            request = dataclasses.replace(request, attempt=claimed.attempt)  # tagged on the run
        adopted: list[StartedRun] = []

        def look_before_retrying(_err: TransientBackendError) -> StartedRun | None:
            # The request may have reached the backend before the error: look first.
            try:
                existing = self.backend.find_run(request)
            except TransientBackendError:
                return None
            if existing is not None:
                adopted.append(existing)
            return existing

        try:
            started = self._with_retry(
                lambda: self.backend.start_view(request), request.label, look_before_retrying
            )
        except TransientBackendError as err:
            return self._fail(
                request,
                f"backend {self.backend.name} still unavailable after "
                f"{self.retry.attempts} attempts: {describe_error(err)}",
            )
        except Exception as err:  # recorded with its reason; other views go on
            return self._fail(request, describe_error(err))
        action = ViewAction.ADOPTED if adopted else ViewAction.STARTED
        return self._record_started(request, started, action)

    def _record_started(
        self, request: ViewRequest, started: StartedRun, action: ViewAction
    ) -> ViewOutcome:
        self.ledger.mark_started(request.scan_id, request.view, started)
        self.in_flight[(request.scan_id, request.view)] = started.run_id
        log.info(
            "%s %s: run %s%s",
            request.label,
            action.value,
            started.run_id,
            f" {started.web_url}" if started.web_url else "",
        )
        return ViewOutcome(
            request.scan_id,
            request.view,
            request.view_file,
            action,
            RunStatus.ACTIVE,
            run_id=started.run_id,
            web_url=started.web_url,
        )

    def _fail(self, request: ViewRequest, reason: str) -> ViewOutcome:
        self.ledger.mark_failed(request.scan_id, request.view, reason)
        log.error("%s failed to start: %s", request.label, reason)
        return ViewOutcome(
            request.scan_id,
            request.view,
            request.view_file,
            ViewAction.FAILED,
            RunStatus.FAILED,
            error=reason,
        )

    def _outcome(self, request: ViewRequest, action: ViewAction) -> ViewOutcome:
        record = self.ledger.get(request.scan_id, request.view)
        assert record is not None
        return ViewOutcome(
            request.scan_id,
            request.view,
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
    ) -> T:
        """``call()``, retried with backoff on :class:`TransientBackendError` (the one retry
        loop of the launcher). Before each retry ``instead_of_retry(err)`` may return a
        value to use instead (e.g. a run found to exist after all). The last error is
        raised when every attempt failed."""
        delays = self.retry.delays()
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
        raise AssertionError("unreachable")

    def _wait_for_slot(self) -> None:
        """Block until fewer than ``config.concurrency`` runs are in flight."""
        while len(self.in_flight) >= self.config.concurrency:
            self.refresh()
            if len(self.in_flight) >= self.config.concurrency:
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
            if run_id is None:
                continue
            progress = self._poll(*key, run_id)
            if progress is None:
                continue
            record = self.ledger.update_progress(*key, progress)
            if record.status.terminal:
                del self.in_flight[key]
                log.info(
                    "%s %s%s",
                    record.label,
                    record.status.value,
                    f": {record.error}" if record.error else "",
                )
        return True

    def _poll(self, scan_id: int, view: int, run_id: str) -> RunProgress | None:
        try:
            return self.backend.poll(run_id)
        except TransientBackendError as err:
            log.warning("scan %d view %d: poll of run %s failed (%s)", scan_id, view, run_id, err)
            return None
        except Exception as err:
            return RunProgress(
                RunStatus.FAILED, error=f"cannot follow run {run_id}: {describe_error(err)}"
            )

    def wait(
        self,
        scan_id: int,
        progress_callback: Callable[[list[RunRecord]], None] | None = None,
        poll_interval_s: float | None = None,
        timeout_s: float | None = None,
    ) -> list[RunRecord]:
        """Poll until every ledger row of ``scan_id`` is finished; returns the rows.

        Rows started by another process are polled too when the backend's runs
        outlive their starter (Globus); otherwise their owner's updates are read.
        ``progress_callback(rows)`` is called after every round.
        """
        interval = self.poll_interval_s if poll_interval_s is None else poll_interval_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        shared = not self.backend.runs_die_with_owner
        while True:
            self.refresh()
            rows = self.ledger.runs(scan_id)
            for row in rows:
                key = (row.scan_id, row.view)
                if (
                    shared
                    and row.status in (RunStatus.ACTIVE, RunStatus.INACTIVE)
                    and row.run_id
                    and key not in self.in_flight
                    and row.backend == self.backend.name
                ):
                    progress = self._poll(row.scan_id, row.view, row.run_id)
                    if progress is not None:
                        self.ledger.update_progress(row.scan_id, row.view, progress)
            rows = self.ledger.runs(scan_id)
            if progress_callback is not None:
                progress_callback(rows)
            if all(row.status.terminal for row in rows):
                return rows
            if deadline is not None and time.monotonic() > deadline:
                unfinished = [r.label for r in rows if not r.status.terminal]
                raise TimeoutError(f"runs still unfinished after {timeout_s} s: {unfinished}")
            waiting_on = next(iter(self.in_flight.values()), None)
            if (
                waiting_on is not None and self._sleep is time.sleep
            ):  # not when a test injects sleep
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
            if record.status in (RunStatus.ACTIVE, RunStatus.INACTIVE):
                if self.backend.runs_die_with_owner:
                    self.ledger.restart(record.scan_id, record.view)
                else:
                    assert record.run_id is not None
                    self.in_flight[(record.scan_id, record.view)] = record.run_id
                    outcomes.append(self._outcome(request, ViewAction.ADOPTED))
                    continue
            elif record.status is RunStatus.SUBMITTING:
                try:
                    existing = self._with_retry(
                        lambda r=request: self.backend.find_run(r), f"{request.label}: find_run"
                    )
                except Exception as err:
                    outcomes.append(self._fail(request, describe_error(err)))
                    continue
                if existing is not None:
                    outcomes.append(self._record_started(request, existing, ViewAction.ADOPTED))
                    continue
            self._wait_for_slot()
            outcomes.append(self._submit(request))
        return outcomes

    def scan_settled_in_ledger(self, scan_id: int) -> bool:
        """True when the ledger shows the scan handed over completely (or failed as a whole),
        so a watcher must not start it again."""
        record = self.ledger.scan(scan_id)
        return record is not None and record.status in (ScanState.SUBMITTED, ScanState.FAILED)
