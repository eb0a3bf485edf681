"""The watcher service: observer -> queue -> settle stage -> launcher.

Threads:

- the watchdog observer (inotify, or polling for NFS/GPFS where inotify misses
  writes made by other hosts) calls :class:`watcher.handler.ScanFolderHandler`,
  which only enqueues scan folder paths;
- one worker thread drains the queue into the :class:`watcher.settle.SettleTracker`
  and hands every complete scan to :class:`flows.launcher.Launcher` (the same code
  path as ``run-flow``, with ``trigger:auto``), and now and then polls the runs in
  flight so the ledger (and ``status``) stays current.

On start the worker first recovers ledger rows of a previous process that died
(``Launcher.recover``), then catches up: scan folders already on disk that the
ledger has not seen handed over are fed to the settle stage like new ones (their
age taken from the newest file time); scans the ledger shows as submitted or
failed are left alone. The observer is started before the catch-up, so nothing
that appears meanwhile is missed.

A scan that fails (no views, unreadable file, backend error) is logged and
recorded in the ledger with its reason; the watcher goes on.
"""

from __future__ import annotations

import logging
import pathlib
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from flows.backend import Backend, Trigger
from flows.config import Config
from flows.launcher import (
    DEFAULT_RETRY,
    Launcher,
    RetryPolicy,
    ViewAction,
    describe_error,
    make_backend,
)
from flows.ledger import Ledger, open_ledger
from flows.scans import ScanNameError, scan_folders, scan_id_of
from flows.terminal import configure_logging as configure_printable_logging
from recon.errors import InputFileNotFound, PtychoflowError
from watcher.handler import ScanFolderHandler
from watcher.settle import SettleTracker

log = logging.getLogger("ptychoflow.watcher")

BackendFactory = Callable[[Config], Backend]


def configure_logging(level: int = logging.INFO) -> None:
    """One timestamped line per event on stderr (what a systemd journal or tmux shows)."""
    configure_printable_logging(level)  # control characters in file names escaped


class WatcherService:
    """Watches ``config.acquisition_root`` and starts every complete scan once.

    ``backend_factory(config)`` builds the backend (default: the one the config names).
    ``polling``: use a polling observer every ``polling_interval_s`` seconds instead of
    inotify. ``tick_s``: how often the worker checks the settle stage when idle.
    ``refresh_interval_s``: how often runs in flight are polled for the ledger.
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
        retry: RetryPolicy = DEFAULT_RETRY,
    ):
        self.config = config
        self.backend_factory = backend_factory
        self.polling = polling
        self.polling_interval_s = polling_interval_s
        self.tick_s = tick_s
        self.refresh_interval_s = refresh_interval_s
        self.retry = retry
        self.stop_event = threading.Event()
        self.events: queue.Queue[pathlib.Path] = queue.Queue()
        self.tracker = SettleTracker(config.marker, config.settle_seconds)
        self.failed: BaseException | None = None
        self._observer: Any = None
        self._worker: threading.Thread | None = None
        self.backend: Backend | None = None
        self.ledger: Ledger | None = None
        self.launcher: Launcher | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start observing and the worker; returns at once."""
        root = self.config.acquisition_root
        if not root.is_dir():
            raise InputFileNotFound(
                f"acquisition root {root} does not exist or is not a folder "
                "(set acquisition_root in the config)"
            )
        self.ledger = open_ledger(self.config)
        self.backend = self.backend_factory(self.config)
        self.launcher = Launcher(
            self.config,
            self.backend,
            self.ledger,
            retry=self.retry,
            stop_event=self.stop_event,
        )
        if self.polling:
            self._observer = PollingObserver(timeout=self.polling_interval_s)
        else:
            self._observer = Observer()
        handler = ScanFolderHandler(root, self.config.scan_regex(), self.events)
        self._observer.schedule(handler, str(root), recursive=True)
        self._observer.start()
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
        log.info("watcher stopped")

    def alive(self) -> bool:
        return bool(
            self._worker
            and self._worker.is_alive()
            and self._observer is not None
            and self._observer.is_alive()
        )

    def run_forever(self) -> int:
        """Run until SIGINT/SIGTERM (exit code 0) or until a part dies (exit code 1)."""

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
                if not self.alive():
                    log.error("a watcher thread died; stopping")
                    self.failed = self.failed or RuntimeError("observer thread died")
                    break
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if self.failed else 0

    # -- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        assert self.launcher is not None
        try:
            for outcome in self.launcher.recover():
                log.info("recovered %s: %s", outcome.label, outcome.action)
            self._catch_up()
            last_refresh = time.monotonic()
            refreshing = False
            while not self.stop_event.is_set():
                self._drain_events()
                for scan_path in self.tracker.ready():
                    if self.stop_event.is_set():
                        break  # not handed over; the next start's catch-up will
                    self._handle(scan_path)
                # Follow runs in flight in short slices, so new scans are never held up.
                if refreshing or time.monotonic() - last_refresh >= self.refresh_interval_s:
                    refreshing = not self.launcher.refresh(max_seconds=self.tick_s / 2)
                    if not refreshing:
                        last_refresh = time.monotonic()
        except BaseException as err:  # the watcher must say why it stops
            log.exception("watcher worker failed: %s", err)
            self.failed = err
            self.stop_event.set()

    def _drain_events(self) -> None:
        try:
            path = self.events.get(timeout=self.tick_s)
        except queue.Empty:
            return
        while True:
            self._touch(path)
            try:
                path = self.events.get_nowait()
            except queue.Empty:
                return

    def _touch(self, scan_path: pathlib.Path, age_seconds: float = 0.0) -> None:
        assert self.launcher is not None
        if not self.tracker.touch(scan_path, age_seconds=age_seconds):
            # A scan handed over before: a view file that arrived since (view000 after
            # view001) makes the ledger and the folder differ; hand it over again.
            if not self.tracker.was_reported(scan_path) or self.launcher.scan_handed_over(
                scan_path.name
            ):
                return
            log.info("%s: a view file arrived after it was handed over", scan_path.name)
            self.tracker.reopen(scan_path)
            self.tracker.touch(scan_path, age_seconds=age_seconds)
            return
        scan_id = self.config.scan_id_of(scan_path.name)
        if scan_id is None or self.launcher.scan_handed_over(scan_path.name):
            self.tracker.forget(scan_path)
            log.info("%s: seen; the ledger shows it handed over already", scan_path.name)
            return
        waiting = (
            f"waiting for {self.config.marker}"
            if self.config.marker
            else f"waiting {self.config.settle_seconds:g} s without changes"
        )
        log.info("%s: scan folder seen; %s", scan_path.name, waiting)

    def _catch_up(self) -> None:
        """Feed scan folders already on disk to the settle stage."""
        now = time.time()
        assert self.ledger is not None
        found, refused = scan_folders(self.config)
        for name, reason in refused:
            if self.ledger.scan(name) is None:
                self.ledger.scan_failed(name, None, reason)
                log.error("%s: failed: %s", name, reason)
        for scan in found:
            folder = scan.path
            try:
                newest = max(
                    (p.stat().st_mtime for p in folder.rglob("*")),
                    default=folder.stat().st_mtime,
                )
            except OSError:
                newest = now
            self._touch(folder, age_seconds=max(0.0, now - newest))

    def _handle(self, scan_path: pathlib.Path) -> None:
        """Start a complete scan; record and log any failure, never raise for one scan."""
        assert self.launcher is not None and self.ledger is not None
        try:
            scan_id = scan_id_of(self.config, scan_path.name)
        except ScanNameError:
            scan_id = None  # start_scan records the refusal
        else:
            if scan_id is None:
                return
        if self.launcher.scan_handed_over(scan_path.name):
            log.info("%s: complete; the ledger shows it handed over already", scan_path.name)
            return
        log.info("%s: complete; starting one run per view", scan_path.name)
        try:
            outcomes = self.launcher.start_scan(scan_path.name, trigger=Trigger.AUTO)
        except PtychoflowError as err:
            self.ledger.scan_failed(scan_path.name, scan_id, str(err))
            log.error("%s: failed: %s", scan_path.name, err)
            return
        except Exception as err:  # a backend bug must not stop the watcher
            self.ledger.scan_failed(scan_path.name, scan_id, describe_error(err))
            log.exception("%s: failed: %s", scan_path.name, describe_error(err))
            return
        counts = {action: 0 for action in ViewAction}
        for outcome in outcomes:
            counts[outcome.action] += 1
        log.info(
            "%s: %s",
            scan_path.name,
            ", ".join(f"{n} {action.value}" for action, n in counts.items() if n),
        )
