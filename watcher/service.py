"""The watcher service: observer -> queue -> settle stage -> launcher.

Threads:

- the watchdog observer (inotify, or polling for NFS/GPFS where inotify misses
  writes made by other hosts) watches the acquisition root itself, not
  recursively, and calls :class:`watcher.handler.ScanFolderHandler`, which only
  enqueues scan folder paths. What happens inside a scan folder is judged by the
  settle stage from listings of the folder's own entries (:mod:`watcher.settle`),
  so a deep or huge tree inside a scan costs nothing and cannot stop the observer;
- one worker thread drains the queue into the :class:`watcher.settle.SettleTracker`
  and hands every complete scan to :class:`flows.launcher.Launcher` (the same code
  path as ``run-flow``, with ``trigger:auto``), and now and then polls the runs in
  flight so the ledger (and ``status``) stays current;
- the main thread (:meth:`WatcherService.run_forever`) checks that both live. An
  observer that died (or an emitter thread of it) is restarted, at most
  :data:`MAX_OBSERVER_RESTARTS` times in :data:`OBSERVER_RESTART_WINDOW_S`; past that,
  or when the worker dies, the watcher exits with code 1 so systemd restarts it.

On start the worker first recovers ledger rows of a previous process that died
(``Launcher.recover``), then catches up: scan folders already on disk that the
ledger has not seen handed over are fed to the settle stage like new ones (their
age taken from the newest file time); scans the ledger shows as submitted or
failed are left alone unless a view file appeared that the ledger has no row for.
The same look at the whole root is repeated every ``rescan_interval_s``: it picks
up view files that arrive after their scan was handed over (the launcher starts
only the views the ledger does not know) and scan folders an observer missed.

A scan that fails (no views, unreadable file, backend error, an id too long to be
a scan id, a folder that is a symlink out of the acquisition root) is logged and
recorded in the ledger with its reason; the watcher goes on. When the ledger is
busy (another process holds its lock) the scan is kept and tried again later.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from flows.backend import Backend, Trigger
from flows.config import Config
from flows.errors import LedgerBusyError, LedgerUnwritableError
from flows.launcher import (
    DEFAULT_RETRY,
    Launcher,
    RetryPolicy,
    ViewAction,
    ViewOutcome,
    describe_error,
    make_backend,
)
from flows.ledger import Ledger, open_ledger
from flows.scans import ScanNameError, matches_view_glob, scan_id_of
from flows.terminal import configure_logging as configure_printable_logging
from recon.errors import InputFileNotFound, PtychoflowError
from watcher.handler import ScanFolderHandler
from watcher.settle import SettleTracker, newest_change, scan_listing

log = logging.getLogger("ptychoflow.watcher")

BackendFactory = Callable[[Config], Backend]

#: Errors that mean "the ledger cannot be used now" (another process holds its lock,
#: a disk hiccup): the scan is kept and tried again later; the watcher goes on.
LEDGER_UNAVAILABLE: tuple[type[Exception], ...] = (sqlite3.OperationalError, LedgerBusyError)

#: An observer that dies is restarted at most this many times within the window below;
#: one more death makes the watcher exit 1 (systemd's ``Restart=on-failure`` takes over).
MAX_OBSERVER_RESTARTS = 5
OBSERVER_RESTART_WINDOW_S = 600.0

#: How often the settle stage is asked while scans wait for their marker (seconds).
PENDING_TICK_S = 0.01

#: Delays between tries of a scan that could not be handed over because the ledger was
#: busy or something unexpected failed: first, doubling, at most.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


def configure_logging(level: int = logging.INFO, debug_file: pathlib.Path | None = None) -> None:
    """One timestamped line per event on stderr (what a systemd journal or tmux shows);
    control characters (from file names) are escaped, so a line stays one line. Parsl's
    and the Compute engine's own INFO lines go to ``debug_file`` (the watcher uses
    ``<state_dir>/engine-debug.log``), not to the journal; their warnings stay."""
    configure_printable_logging(level, debug_file=debug_file)


@dataclasses.dataclass
class _Retry:
    due: float
    delay: float


class WatcherService:
    """Watches ``config.acquisition_root`` and starts every complete scan once.

    ``backend_factory(config)`` builds the backend (default: the one the config names).
    ``polling``: use a polling observer every ``polling_interval_s`` seconds instead of
    inotify. ``tick_s``: how often the worker checks the settle stage when idle.
    ``refresh_interval_s``: how often runs in flight are polled for the ledger.
    ``rescan_interval_s``: how often the whole root is looked at (late view files,
    missed events). ``ledger_busy_timeout_s``: how long one ledger call waits for a
    lock held by another process before the watcher retries later.
    """

    def __init__(
        self,
        config: Config,
        backend_factory: BackendFactory = make_backend,
        *,
        polling: bool = False,
        polling_interval_s: float = 1.0,
        tick_s: float = 0.05,
        refresh_interval_s: float = 2.0,
        rescan_interval_s: float = 30.0,
        ledger_busy_timeout_s: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_observer_restarts: int = MAX_OBSERVER_RESTARTS,
    ):
        self.config = config
        self.backend_factory = backend_factory
        self.polling = polling
        self.polling_interval_s = polling_interval_s
        self.tick_s = tick_s
        self.refresh_interval_s = refresh_interval_s
        self.rescan_interval_s = rescan_interval_s
        self.ledger_busy_timeout_s = ledger_busy_timeout_s
        self.retry = retry
        self.max_observer_restarts = max_observer_restarts
        self.stop_event = threading.Event()
        self.events: queue.Queue[pathlib.Path] = queue.Queue()
        missing = None
        if config.beamline is not None:
            from recon.beamline import missing_parts

            missing = functools.partial(missing_parts, settings=config.beamline)
        self.tracker = SettleTracker(config.marker, config.settle_seconds, missing=missing)
        self.failed: BaseException | None = None
        self._observer: BaseObserver | None = None
        self._observer_restarts: list[float] = []
        self._rescan_requested = threading.Event()
        self._observer_deaf = threading.Event()
        #: Scan folders the periodic look found before any event named them: when found.
        self._unreported: dict[pathlib.Path, float] = {}
        self._worker: threading.Thread | None = None
        self._previous_excepthook: Callable[[threading.ExceptHookArgs], Any] | None = None
        self._thread_errors: dict[str, str] = {}
        self.backend: Backend | None = None
        self.ledger: Ledger | None = None
        self.launcher: Launcher | None = None
        #: Scans complete but not handed over yet (ledger busy, unexpected error).
        self._retries: dict[pathlib.Path, _Retry] = {}
        #: Folders refused for their name (logged and recorded once per process).
        self._refused: set[pathlib.Path] = set()
        #: The view file names each scan had when it was last handed over.
        self._handed_views: dict[pathlib.Path, frozenset[str]] = {}

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start observing and the worker; returns at once."""
        root = self.config.acquisition_root
        if not root.is_dir():
            raise InputFileNotFound(
                f"acquisition root {root} does not exist or is not a folder "
                "(set acquisition_root in the config)"
            )
        self._previous_excepthook = threading.excepthook
        threading.excepthook = self._thread_died
        self.ledger = open_ledger(self.config, busy_timeout_s=self.ledger_busy_timeout_s)
        self.backend = self.backend_factory(self.config)
        self.launcher = Launcher(
            self.config,
            self.backend,
            self.ledger,
            retry=self.retry,
            stop_event=self.stop_event,
        )
        self._observer = self._start_observer()
        mode = f"polling every {self.polling_interval_s:g} s" if self.polling else "inotify"
        rule = (
            f"marker {self.config.marker!r}"
            if self.config.marker
            else f"no change for {self.config.settle_seconds:g} s and every file opens"
        )
        log.info(
            "watching %s (%s); a scan is complete on %s; backend %s; ledger %s",
            root,
            mode,
            rule,
            self.backend.name,
            self.config.ledger,
        )
        self._worker = threading.Thread(
            target=self._work, name="ptychoflow-watcher-worker", daemon=True
        )
        self._worker.start()

    def _start_observer(self) -> BaseObserver:
        """A started observer of the acquisition root itself (not recursive)."""
        observer: BaseObserver = (
            PollingObserver(timeout=self.polling_interval_s) if self.polling else Observer()
        )
        handler = ScanFolderHandler(
            self.config.acquisition_root, self.config.scan_regex(), self.events
        )
        observer.schedule(handler, str(self.config.acquisition_root), recursive=False)
        observer.start()
        return observer

    def stop(self, timeout_s: float = 60.0) -> None:
        """Finish the current submission, stop the observer, release the backend."""
        self.stop_event.set()
        if self._worker is not None:
            self._worker.join(timeout_s)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout_s)
        if self.backend is not None:
            self.backend.close()
        if self.ledger is not None:
            self.ledger.close()
        if self._previous_excepthook is not None:
            threading.excepthook = self._previous_excepthook
            self._previous_excepthook = None
        log.info("watcher stopped")

    def observer_alive(self) -> bool:
        """The observer thread, every emitter thread it started and (inotify) the thread
        reading its inotify file descriptor are running."""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        emitters = observer.emitters
        if not emitters or not all(emitter.is_alive() for emitter in emitters):
            return False
        reader = getattr(observer, "_inotify_fd", None)  # watchdog's InotifyObserver
        return not isinstance(reader, threading.Thread) or reader.is_alive()

    def alive(self) -> bool:
        return bool(self._worker and self._worker.is_alive() and self.observer_alive())

    def run_forever(self) -> int:
        """Run until SIGINT/SIGTERM (exit code 0) or until a part dies for good (exit code 1).

        A dead observer is restarted (see the module docstring); a dead worker, or an
        observer that keeps dying, ends the watcher with exit code 1.
        """

        def request_stop(signum: int, _frame: object) -> None:
            log.info(
                "received %s; stopping after the current submission", signal.Signals(signum).name
            )
            self.stop_event.set()

        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.start()
            while not self.stop_event.wait(0.2):
                if self._worker is None or not self._worker.is_alive():
                    log.error("the watcher's worker thread died; exiting with code 1")
                    self.failed = self.failed or RuntimeError("worker thread died")
                    break
                if (
                    self._observer_deaf.is_set() or not self.observer_alive()
                ) and not self._restart_observer():
                    break
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if self.failed else 0

    def _thread_died(self, args: threading.ExceptHookArgs) -> None:
        """An exception ended a thread (e.g. an observer's emitter): one log line, no
        traceback; the main loop notices the dead thread and acts."""
        name = args.thread.name if args.thread is not None else "a thread"
        reason = f"{args.exc_type.__name__}: {args.exc_value}"
        self._thread_errors[name] = reason
        log.error("thread %s died: %s", name, reason)

    def _restart_observer(self) -> bool:
        """Replace a dead observer; False (and ``self.failed`` set) when it died too often."""
        now = time.monotonic()
        self._observer_restarts = [
            t for t in self._observer_restarts if now - t < OBSERVER_RESTART_WINDOW_S
        ]
        reasons = "; ".join(f"{n}: {r}" for n, r in self._thread_errors.items()) or "no reason"
        self._thread_errors.clear()
        if self._observer_deaf.is_set():
            reasons = "it did not report a new scan folder"
            self._observer_deaf.clear()
        if len(self._observer_restarts) >= self.max_observer_restarts:
            log.error(
                "the file-system observer died %d times within %.0f s (last: %s); "
                "exiting with code 1 so the service manager restarts the watcher",
                len(self._observer_restarts) + 1,
                OBSERVER_RESTART_WINDOW_S,
                reasons,
            )
            self.failed = self.failed or RuntimeError("the file-system observer keeps dying")
            return False
        self._observer_restarts.append(now)
        log.error("the file-system observer stopped (%s); restarting it", reasons)
        old = self._observer
        self._observer = None
        if old is not None:
            try:
                old.stop()
                old.join(2.0)  # a thread stuck in a read is left behind (daemon)
            except Exception as err:  # a broken observer must not stop the restart
                log.warning("stopping the old observer failed: %s", describe_error(err))
        try:
            self._observer = self._start_observer()
        except Exception as err:  # counted as one more death by the next check
            log.error("restarting the file-system observer failed: %s", describe_error(err))
            return True
        log.info("file-system observer restarted")
        self._unreported.clear()  # the new observer reports only what happens from now
        self._rescan_requested.set()  # events may have been missed meanwhile
        return True

    # -- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        assert self.launcher is not None
        try:
            self._recover()
            self._rescan(catching_up=True)
            last_rescan = time.monotonic()
            last_refresh = time.monotonic()
            refreshing = False
            while not self.stop_event.is_set():
                self._drain_events()
                if (
                    self._rescan_requested.is_set()
                    or time.monotonic() - last_rescan >= self.rescan_interval_s
                ):
                    self._rescan_requested.clear()
                    self._rescan()
                    last_rescan = time.monotonic()
                for scan_path in [*self.tracker.ready(), *self._due_retries()]:
                    if self.stop_event.is_set():
                        break  # not handed over; the next start's catch-up will
                    self._handle(scan_path)
                # Follow runs in flight in short slices, so new scans are never held up.
                if refreshing or time.monotonic() - last_refresh >= self.refresh_interval_s:
                    try:
                        refreshing = not self.launcher.refresh(max_seconds=self.tick_s / 2)
                    except LedgerUnwritableError:
                        raise
                    except Exception as err:  # runs are followed again at the next interval
                        reason = (
                            self._ledger_busy(err)
                            if isinstance(err, LEDGER_UNAVAILABLE)
                            else describe_error(err)
                        )
                        log.warning("following runs in flight failed: %s; trying later", reason)
                        refreshing = False
                    if not refreshing:
                        last_refresh = time.monotonic()
        except BaseException as err:  # the watcher must say why it stops
            log.error("watcher worker failed: %s", describe_error(err))
            log.debug("worker failure", exc_info=True)
            self.failed = err
            self.stop_event.set()

    def _recover(self) -> None:
        """``Launcher.recover``, tried again while the ledger is busy."""
        assert self.launcher is not None
        delay = RETRY_FIRST_S
        while not self.stop_event.is_set():
            try:
                outcomes = self.launcher.recover()
            except LEDGER_UNAVAILABLE as err:
                log.warning("%s; recovering again in %.0f s", self._ledger_busy(err), delay)
                self.stop_event.wait(delay)
                delay = min(RETRY_MAX_S, 2 * delay)
                continue
            for outcome in outcomes:
                log.info("recovered %s: %s", outcome.label, outcome.action.value)
                if outcome.action is ViewAction.DEFERRED:  # the backend is unavailable
                    self._retry_later(
                        self.config.acquisition_root / outcome.scan_folder,
                        outcome.error or "backend unavailable",
                    )
            return

    def _ledger_busy(self, err: BaseException) -> str:
        return (
            f"ledger {self.config.ledger} is busy or unusable ({err}); another process "
            "(run-flow, status, a second watcher) may hold its lock"
        )

    def _drain_events(self) -> None:
        # Markers inside a scan raise no event (only the root is watched): while scans
        # wait for theirs, look more often (one stat per waiting scan each time).
        wait_s = min(self.tick_s, PENDING_TICK_S) if self.tracker.pending else self.tick_s
        try:
            path = self.events.get(timeout=wait_s)
        except queue.Empty:
            return
        while True:
            self._unreported.pop(path, None)
            self._touch(path)
            try:
                path = self.events.get_nowait()
            except queue.Empty:
                return

    def _touch(
        self, scan_path: pathlib.Path, age_seconds: float = 0.0, *, how: str = "seen"
    ) -> None:
        if scan_path in self._refused or not self.tracker.touch(scan_path, age_seconds=age_seconds):
            return
        problem = self._folder_problem(scan_path)
        if problem is not None:
            self.tracker.forget(scan_path)
            self._refuse(scan_path, problem)
            return
        try:
            handed_over = self._ledger_shows_handed_over(scan_path)
        except Exception as err:  # checked again when complete; never stops the watcher
            reason = (
                self._ledger_busy(err)
                if isinstance(err, LEDGER_UNAVAILABLE)
                else describe_error(err)
            )
            log.warning("%s: %s; checked again when complete", scan_path.name, reason)
            handed_over = False
        if handed_over:
            self.tracker.forget(scan_path)
            log.info("%s: seen; the ledger shows it handed over already", scan_path.name)
            return
        waiting = (
            f"waiting for {self.config.marker}"
            if self.config.marker
            else f"waiting {self.config.settle_seconds:g} s without changes"
        )
        log.info("%s: scan folder %s; %s", scan_path.name, how, waiting)

    def _rescan(self, *, catching_up: bool = False) -> None:
        """Look at every scan folder under the root (one listing each, no deeper): new
        folders go to the settle stage; handed-over scans with view files the ledger has
        no row for are handed over again.

        Outside the catch-up, a new scan folder found here that no event names within a
        grace time means the observer went deaf without dying (e.g. its inotify
        descriptor was closed): the main thread restarts it.
        """
        root = self.config.acquisition_root
        regex = self.config.scan_regex()
        now = time.time()
        try:
            with os.scandir(root) as listing:
                names = sorted(entry.name for entry in listing)
        except OSError as err:
            log.error("cannot list the acquisition root %s: %s", root, err)
            return
        for name in names:
            if self.stop_event.is_set():
                return
            if not regex.fullmatch(name):
                continue
            folder = root / name
            if not folder.is_dir():
                continue
            if self.tracker.is_reported(folder):
                self._look_for_late_views(folder)
                continue
            known = folder in self._refused or folder in self.tracker.pending
            newest = newest_change(folder)
            age = max(0.0, now - newest) if newest is not None else 0.0
            if catching_up:
                self._touch(folder, age_seconds=age, how="found on disk")
            else:
                self._touch(folder, age_seconds=age, how="found by the periodic look")
            if not catching_up and not known:
                self._unreported.setdefault(folder, time.monotonic())
            if self.tracker.is_reported(folder):  # the ledger knew it: any views missing?
                self._look_for_late_views(folder)
        missed = sorted(
            folder
            for folder, found in self._unreported.items()
            if time.monotonic() - found > self._missed_event_grace_s()
        )
        if missed:
            log.warning(
                "the file-system observer did not report %s within %.0f s",
                ", ".join(folder.name for folder in missed[:5]),
                self._missed_event_grace_s(),
            )
            self._unreported.clear()
            self._observer_deaf.set()

    def _missed_event_grace_s(self) -> float:
        """How old an unreported scan folder must be to count as missed by the observer."""
        return 2.0 + (2 * self.polling_interval_s if self.polling else 0.0)

    def _look_for_late_views(self, folder: pathlib.Path) -> None:
        """Track a handed-over scan again when it has a view file the ledger lacks."""
        if folder in self._refused or folder in self._retries:
            return
        views = self._view_files(folder)
        if self._has_views_to_retry(folder):
            return
        if not views or views == self._handed_views.get(folder):
            return
        try:
            known = self._started_view_files(folder)
        except Exception as err:  # looked at again by the next periodic look
            reason = (
                self._ledger_busy(err)
                if isinstance(err, LEDGER_UNAVAILABLE)
                else describe_error(err)
            )
            log.warning("%s: %s; looked at again later", folder.name, reason)
            return
        new = sorted(views - known)
        self._handed_views[folder] = views
        if not new:
            return
        log.info(
            "%s: %d view file(s) the ledger has no run for (%s); handing the scan over again",
            folder.name,
            len(new),
            ", ".join(new[:5]) + (" ..." if len(new) > 5 else ""),
        )
        self.tracker.reopen(folder)
        self.tracker.touch(folder)

    def _has_views_to_retry(self, folder: pathlib.Path) -> bool:
        """Track a handed-over scan again when a view failed for a transient reason and
        its retry is due (flows.transient_failures); True when it did."""
        assert self.launcher is not None
        try:
            due = self.launcher.views_to_retry(folder.name)
        except Exception as err:  # looked at again by the next periodic look
            log.warning("%s: %s; looked at again later", folder.name, describe_error(err))
            return False
        if not due:
            return False
        log.info(
            "%s: %d view(s) failed for a transient reason and are due for a retry (%s); "
            "handing the scan over again",
            folder.name,
            len(due),
            ", ".join(due[:5]) + (" ..." if len(due) > 5 else ""),
        )
        self.tracker.reopen(folder)
        self.tracker.touch(folder)
        return True

    def _view_files(self, folder: pathlib.Path) -> frozenset[str]:
        listing = scan_listing(folder) or frozenset()
        matches = {name for name, regular, _, _ in listing if regular}
        return frozenset(name for name in matches if matches_view_glob(name, self.config.view_glob))

    def _due_retries(self) -> list[pathlib.Path]:
        now = time.monotonic()
        due = sorted(path for path, retry in self._retries.items() if retry.due <= now)
        return due

    def _retry_later(self, scan_path: pathlib.Path, why: str) -> None:
        previous = self._retries.get(scan_path)
        delay = RETRY_FIRST_S if previous is None else min(RETRY_MAX_S, 2 * previous.delay)
        self._retries[scan_path] = _Retry(time.monotonic() + delay, delay)
        log.warning("%s: not handed over: %s; trying again in %.0f s", scan_path.name, why, delay)

    def _handle(self, scan_path: pathlib.Path) -> None:
        """Start a complete scan; record and log any failure, never raise for one scan."""
        assert self.launcher is not None and self.ledger is not None
        self._retries.pop(scan_path, None)
        problem = self._folder_problem(scan_path)
        if problem is not None:
            self._record_failure(scan_path, problem)
            return
        try:
            if self._ledger_shows_handed_over(scan_path) and not self._has_unstarted_views(
                scan_path
            ):
                log.info("%s: complete; the ledger shows it handed over already", scan_path.name)
                return
            log.info("%s: complete; starting one run per view", scan_path.name)
            self._handed_views[scan_path] = self._view_files(scan_path)
            outcomes = self._start_scan(scan_path)
        except LEDGER_UNAVAILABLE as err:
            self._retry_later(scan_path, self._ledger_busy(err))
            return
        except LedgerUnwritableError:
            raise  # write-ahead: nothing may start unrecorded; the watcher stops and says why
        except PtychoflowError as err:
            self._record_failure(scan_path, str(err))
            return
        except Exception as err:  # a backend bug must not stop the watcher
            log.debug("unexpected failure of %s", scan_path.name, exc_info=True)
            self._record_failure(scan_path, describe_error(err))
            return
        counts = {action: 0 for action in ViewAction}
        for outcome in outcomes:
            counts[outcome.action] += 1
        if counts[ViewAction.DEFERRED]:  # the backend is unavailable: this scan again later
            deferred = next(o for o in outcomes if o.action is ViewAction.DEFERRED)
            self._retry_later(scan_path, deferred.error or "backend unavailable")
        log.info(
            "%s: %s",
            scan_path.name,
            ", ".join(f"{n} {action.value}" for action, n in counts.items() if n) or "no views",
        )

    def _folder_problem(self, scan_path: pathlib.Path) -> str | None:
        """Why a complete scan folder must not be handed over, or None.

        Symlinks: a scan folder that is a symlink is followed only when it resolves to a
        folder inside the acquisition root (e.g. a renamed scan); one that points
        elsewhere is refused, so a link cannot feed files from outside the root.
        """
        problem = self.config.scan_name_problem(scan_path.name)
        if problem is not None:
            return problem
        if scan_path.is_symlink():
            root = self.config.acquisition_root.resolve()
            target = scan_path.resolve()
            if target == root or not target.is_relative_to(root):
                return (
                    f"the scan folder is a symlink to {target}, outside the acquisition root "
                    f"{root}; only links within the root are followed"
                )
        return None

    def _refuse(self, scan_path: pathlib.Path, reason: str) -> None:
        """Record a folder refused for its name once per process; later events are ignored."""
        if scan_path in self._refused:
            return
        self._refused.add(scan_path)
        self._record_failure(scan_path, reason)

    def _record_failure(self, scan_path: pathlib.Path, reason: str) -> None:
        log.error("%s: failed: %s", scan_path.name, reason)
        try:
            self._record_scan_failure(scan_path, reason)
        except Exception as err:  # e.g. the ledger busy: the scan is tried again later
            self._retry_later(
                scan_path,
                self._ledger_busy(err)
                if isinstance(err, LEDGER_UNAVAILABLE)
                else f"recording the failure failed: {describe_error(err)}",
            )

    # -- the launcher and ledger, by scan folder -------------------------------------------------

    def _scan_id(self, scan_path: pathlib.Path) -> int | None:
        """The id in the folder's name; None for a name whose id is refused (too long)."""
        try:
            return scan_id_of(self.config, scan_path.name)
        except ScanNameError:
            return None

    def _start_scan(self, scan_path: pathlib.Path) -> list[ViewOutcome]:
        assert self.launcher is not None
        return self.launcher.start_scan(scan_path.name, trigger=Trigger.AUTO)

    def _ledger_shows_handed_over(self, scan_path: pathlib.Path) -> bool:
        assert self.launcher is not None
        return self.launcher.scan_handed_over(scan_path.name)

    def _started_view_files(self, scan_path: pathlib.Path) -> frozenset[str]:
        """View file names of this scan folder that the ledger has a row for."""
        assert self.ledger is not None
        return frozenset(row.view_file for row in self.ledger.runs(scan_path.name))

    def _has_unstarted_views(self, scan_path: pathlib.Path) -> bool:
        return bool(self._view_files(scan_path) - self._started_view_files(scan_path))

    def _record_scan_failure(self, scan_path: pathlib.Path, reason: str) -> None:
        """The ledger's row for the scan folder says failed, with ``reason`` (also for a
        folder whose name holds no usable id)."""
        assert self.ledger is not None
        self.ledger.scan_failed(scan_path.name, self._scan_id(scan_path), reason)


__all__ = ["WatcherService", "configure_logging"]
