"""A real, file-backed backend for tests of the launcher and the watcher.

Every call that changes something is appended as one JSON line to a log file
(``O_APPEND``, one ``write`` per line, so lines from several processes never
interleave). That makes the log the backend's own record of what it was asked,
readable after the process that asked was killed with SIGKILL:

- ``prepare_scan`` -> ``{"event": "prepare", "scan_dir": ...}``
- ``start_view`` -> ``{"event": "start", "run_id", "label", "tags", "scan_id",
  "view" (the view's name, ``view003``), "view_file", "scan_folder", "scan_dir",
  "recon", "time", "pid"}``

A run "executes" for ``finish_after_s`` seconds from its start record and then
succeeds, or fails for views (names such as ``view003``) listed in ``fail_views``
(the compute stage fails with a reason). ``transient_errors=N`` makes the first N
``start_view`` calls of this instance raise :class:`flows.launcher.TransientBackendError` before
anything is recorded; ``reject_views`` makes ``start_view`` refuse those views
permanently. ``runs_die_with_owner=True`` makes it behave like the local backend
for recovery (an active run of a dead process is considered dead).
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import time
import uuid
from collections.abc import Iterable
from typing import Any

from flows.backend import Backend, RunProgress, RunStatus, StartedRun, ViewRequest
from flows.errors import TransientBackendError
from recon.errors import PtychoflowError


class BackendRefused(PtychoflowError, RuntimeError):
    """The recording backend was told to refuse this view."""


class RecordingBackend(Backend):
    name = "recording"

    def __init__(
        self,
        log_path: pathlib.Path | str,
        *,
        finish_after_s: float = 0.0,
        fail_views: Iterable[str] = (),
        fail_reason: str = "reconstruction failed (told to fail)",
        reject_views: Iterable[str] = (),
        transient_errors: int = 0,
        runs_die_with_owner: bool = False,
        start_delay_s: float = 0.0,
    ):
        self.log_path = pathlib.Path(log_path)
        self.finish_after_s = finish_after_s
        self.fail_views = set(fail_views)
        self.fail_reason = fail_reason
        self.reject_views = set(reject_views)
        self.transient_errors = transient_errors
        self.runs_die_with_owner = runs_die_with_owner
        self.start_delay_s = start_delay_s
        self.closed = False
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()

    # -- the Backend protocol ------------------------------------------------------------------

    def prepare_scan(self, scan_dir: str) -> None:
        self._append({"event": "prepare", "scan_dir": scan_dir, "time": time.time()})

    def start_view(self, request: ViewRequest) -> StartedRun:
        if self.transient_errors > 0:
            self.transient_errors -= 1
            raise TransientBackendError(f"{request.label}: service unavailable (503), try later")
        if request.view in self.reject_views:
            raise BackendRefused(f"{request.label}: refused by the recording backend")
        if self.start_delay_s:
            time.sleep(self.start_delay_s)
        run_id = str(uuid.uuid4())
        self._append(
            {
                "event": "start",
                "run_id": run_id,
                "label": request.label,
                "tags": request.tags,
                "scan_id": request.scan_id,
                "view": request.view,
                "view_file": request.view_file,
                "scan_folder": request.scan_folder,
                "scan_dir": request.compute_dir,
                "recon": request.recon,
                "time": time.time(),
                "pid": os.getpid(),
            }
        )
        return StartedRun(run_id=run_id, web_url=f"https://example.invalid/runs/{run_id}")

    def poll(self, run_id: str) -> RunProgress:
        record = self._start_record(run_id)
        if record is None:
            raise KeyError(f"run {run_id} is not in {self.log_path}")
        elapsed = time.time() - record["time"]
        if elapsed < self.finish_after_s:
            return RunProgress(RunStatus.ACTIVE, stage="compute")
        split = {
            "transfer_in": 0.2 * self.finish_after_s,
            "compute": 0.6 * self.finish_after_s,
            "transfer_out": 0.1 * self.finish_after_s,
        }
        if record["view"] in self.fail_views:
            return RunProgress(
                RunStatus.FAILED,
                stage_seconds={"transfer_in": split["transfer_in"]},
                error=f"{record['view_file']}: {self.fail_reason}",
            )
        return RunProgress(
            RunStatus.SUCCEEDED,
            stage_seconds=split,
            output={"files": [f"recon/{record['scan_dir']}/{record['view']}.h5"]},
        )

    def find_run(self, request: ViewRequest) -> StartedRun | None:
        for record in self.starts():
            if record["label"] == request.label and record["tags"] == request.tags:
                return StartedRun(
                    run_id=record["run_id"],
                    web_url=f"https://example.invalid/runs/{record['run_id']}",
                )
        return None

    def close(self, *, cancel: bool = False) -> None:
        self.closed = True

    # -- reading the log -----------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        return read_log(self.log_path)

    def _start_record(self, run_id: str) -> dict[str, Any] | None:
        """The start record of ``run_id``, reading only what was appended since last time."""
        if not hasattr(self, "_by_run_id"):
            self._by_run_id: dict[str, dict[str, Any]] = {}
            self._read_offset = 0
        if run_id not in self._by_run_id:
            with open(self.log_path, "rb") as file:
                file.seek(self._read_offset)
                chunk = file.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._read_offset += len(complete)
            for line in complete.decode().splitlines():
                record = json.loads(line)
                if record["event"] == "start":
                    self._by_run_id[record["run_id"]] = record
        return self._by_run_id.get(run_id)

    def starts(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["event"] == "start"]

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_log(path: pathlib.Path | str) -> list[dict[str, Any]]:
    """Every complete line of a recording backend's log."""
    text = pathlib.Path(path).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def started_labels(log_path: pathlib.Path | str) -> collections.Counter[str]:
    """How many times each run label was started, from a RecordingBackend log."""
    path = pathlib.Path(log_path)
    if not path.exists():
        return collections.Counter()
    return collections.Counter(r["label"] for r in read_log(path) if r["event"] == "start")


def write_view_file(path: pathlib.Path | str, patterns: int = 2, size: int = 4) -> pathlib.Path:
    """A minimal valid CXI view: ``/entry_1/data_1/data`` (patterns, size, size) float32."""
    import h5py
    import numpy as np

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        file["/entry_1/data_1/data"] = np.ones((patterns, size, size), np.float32)
    return path


def write_scan(
    root: pathlib.Path, scan_id: int, views: int = 2, marker: str | None = "scan.done"
) -> pathlib.Path:
    """``root/scan<id>/view000.cxi ...`` and, last, the marker file (when given)."""
    folder = pathlib.Path(root) / f"scan{scan_id}"
    for view in range(views):
        write_view_file(folder / f"view{view:03d}.cxi")
    if marker:
        (folder / marker).touch()
    return folder


#: Runs ``watcher.service.WatcherService`` with a RecordingBackend in its own process.
#: argv[1]: JSON {"config": path, "log": path, "polling": bool, "backend": {kwargs}}.
WATCHER_SCRIPT = """
import json, sys
from flows.config import load_config
from flows.launcher import RetryPolicy
from tests.functional.recording_backend import RecordingBackend
from watcher.service import WatcherService, configure_logging

settings = json.loads(sys.argv[1])
configure_logging()
sabotage = settings.get("sabotage_observer")
if sabotage in ("on_event", "always"):
    # Simulate an observer crash: an exception raised in watchdog's emitter thread, on
    # every event whose path names "crash-observer" ("on_event"), or on every poll of
    # the file system ("always").
    from watchdog.observers.api import EventEmitter

    original_queue_event = EventEmitter.queue_event
    original_run = EventEmitter.run

    def queue_event(self, event):
        if "crash-observer" in str(event.src_path):
            raise RuntimeError("injected emitter crash")
        original_queue_event(self, event)

    def run(self):
        if sabotage == "always":
            raise RuntimeError("injected emitter crash at start")
        original_run(self)

    EventEmitter.queue_event = queue_event
    EventEmitter.run = run
service = WatcherService(
    load_config(settings["config"]),
    lambda config: RecordingBackend(settings["log"], **settings.get("backend", {})),
    polling=settings.get("polling", False),
    polling_interval_s=settings.get("polling_interval_s", 0.1),
    tick_s=0.02,
    refresh_interval_s=0.2,
    retry=RetryPolicy(attempts=3, first_delay_s=0.01),
    **settings.get("service", {}),
)
if sabotage == "close_inotify_fd_on_sigusr1":
    # Simulate an observer that goes deaf without dying: its inotify descriptor closed
    # and the number taken by a pipe nobody writes to.
    import os, signal

    silent_pipe = os.pipe()

    def close_inotify_fd(signum, frame):
        os.dup2(silent_pipe[0], service._observer._inotify_fd._inotify_fd)
        print("inotify descriptor closed", file=sys.stderr, flush=True)

    signal.signal(signal.SIGUSR1, close_inotify_fd)
sys.exit(service.run_forever())
"""


class WatcherProcess:
    """The watcher in a subprocess (real signals, real SIGKILL), its log lines collected."""

    def __init__(
        self,
        config_path,
        log_path,
        *,
        polling=False,
        backend=None,
        cwd=None,
        service=None,
        sabotage_observer=None,
    ):
        import subprocess
        import sys
        import threading

        repo = pathlib.Path(__file__).resolve().parents[2]
        settings = {
            "config": str(config_path),
            "log": str(log_path),
            "polling": polling,
            "backend": backend or {},
            "service": service or {},
            "sabotage_observer": sabotage_observer,
        }
        env = {**os.environ, "PYTHONPATH": str(repo)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", WATCHER_SCRIPT, json.dumps(settings)],
            cwd=cwd or repo,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, text: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no log line with {text!r}; log:\n" + "\n".join(self.lines))

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 30.0) -> int:
        code = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return code

    def __enter__(self) -> WatcherProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


def write_config(path: pathlib.Path, root: pathlib.Path, **settings: Any) -> pathlib.Path:
    """A TOML config for a watcher test: acquisition root, ledger, marker/settle."""
    values = {
        "acquisition_root": str(root),
        "compute_root": str(path.parent / "compute"),
        "ledger": str(path.parent / "ledger.sqlite"),
        "state_dir": str(path.parent / "state"),
        **settings,
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_until(predicate, timeout_s: float = 30.0, interval_s: float = 0.05, what: str = ""):
    """Poll ``predicate()`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(interval_s)
