"""The watcher as a real process, real file-system events (inotify and polling), real signals.

Runs are started on the file-backed RecordingBackend, whose log is the record of
what the backend was asked to start; the SQLite ledger is read from the test.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from flows.backend import RunStatus
from flows.ledger import Ledger, ScanState
from tests.functional.recording_backend import (
    WatcherProcess,
    read_log,
    started_labels,
    wait_until,
    write_config,
    write_scan,
    write_view_file,
)


def rows_with_runs(ledger_path, scan_id):
    if not ledger_path.exists():
        return []
    ledger = Ledger(ledger_path)
    try:
        return [r for r in ledger.runs(scan_id) if r.run_id]
    finally:
        ledger.close()


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_scans_are_started_once_incomplete_ones_wait_corrupt_ones_fail(setup, polling):
    root, config, log_path, ledger_path = setup
    with WatcherProcess(config, log_path, polling=polling) as watcher:
        watcher.wait_for_line("watching")
        write_scan(root, 100, views=2)
        write_scan(root, 101, views=2, marker=None)  # still being acquired
        corrupt = write_scan(root, 102, views=2, marker=None)
        (corrupt / "view001.cxi").write_bytes(b"truncated by a full disk")
        (corrupt / "scan.done").touch()
        (root / "scan103").mkdir()
        (root / "scan103" / "scan.done").touch()  # complete, but no views at all
        write_scan(root, 104, views=1)
        (root / "recon" / "100").mkdir(parents=True)  # results coming back: not a scan
        write_view_file(root / "recon" / "100" / "000.h5")

        wait_until(lambda: len(rows_with_runs(ledger_path, 104)) == 1, what="scan104 started")
        wait_until(lambda: len(rows_with_runs(ledger_path, 100)) == 2, what="scan100 started")
        ledger = Ledger(ledger_path)
        wait_until(lambda: ledger.scan("scan103") is not None, what="scan103 recorded")
        assert "no view files" in ledger.scan("scan103").error
        assert ledger.scan("scan103").status is ScanState.FAILED
        bad = ledger.get("scan102", "view001.cxi")
        assert bad.status is RunStatus.FAILED
        assert "scan102/view001.cxi: not a readable HDF5/CXI file" in bad.error
        assert ledger.get(
            "scan102", "view000.cxi"
        ).run_id  # the readable view of that scan still ran
        time.sleep(0.5)
        assert ledger.runs(101) == []  # no marker yet: not started

        (root / "scan101" / "scan.done").touch()
        wait_until(lambda: len(rows_with_runs(ledger_path, 101)) == 2, what="scan101 started")
        # The watcher keeps polling runs in flight: the ledger sees them finish.
        wait_until(
            lambda: ledger.counts()[RunStatus.SUCCEEDED] == 6, what="runs recorded as succeeded"
        )
        watcher.wait_for_line("scan101-view001 started: run")
        watcher.signal(signal.SIGTERM)
        assert watcher.wait() == 0
        watcher.wait_for_line("watcher stopped")
        ledger.close()

    labels = started_labels(log_path)
    assert sorted(labels) == [
        "scan100-view000",
        "scan100-view001",
        "scan101-view000",
        "scan101-view001",
        "scan102-view000",
        "scan104-view000",
    ]
    assert set(labels.values()) == {1}


def test_burst_of_50_scans_within_a_second_each_started_once(setup):
    root, config, log_path, _ = setup
    with WatcherProcess(config, log_path) as watcher:
        watcher.wait_for_line("watching")
        began = time.monotonic()
        for scan_id in range(200, 250):
            write_scan(root, scan_id, views=1)
        assert time.monotonic() - began < 1.0
        wait_until(lambda: len(started_labels(log_path)) == 50, what="50 scans started")
        time.sleep(0.3)  # late duplicate events would show up here
        watcher.signal(signal.SIGINT)
        assert watcher.wait() == 0
    labels = started_labels(log_path)
    assert sorted(labels) == [f"scan{i}-view000" for i in range(200, 250)]
    assert set(labels.values()) == {1}


def test_settle_mode_waits_for_replay_to_finish_writing(tmp_path):
    """No marker: a scan written incrementally by `ptychoflow replay` (files held open by
    the HDF5 library) is started only after its last file is closed."""
    root = tmp_path / "acquisition"
    root.mkdir()
    config = write_config(tmp_path / "ptychoflow.toml", root, marker="", settle_seconds=0.3)
    source = write_view_file(tmp_path / "source" / "view000.cxi", patterns=24)
    write_view_file(tmp_path / "source" / "view001.cxi", patterns=24)
    log_path = tmp_path / "runs.jsonl"
    with WatcherProcess(config, log_path) as watcher:
        watcher.wait_for_line("watching")
        replay = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))",
                "replay",
                str(source.parent),
                "--to",
                str(root),
                "--scans",
                "300",
                "--rate",
                "40",
                "--marker",
                "",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert replay.returncode == 0, replay.stderr
        finished_writing = max(p.stat().st_mtime for p in (root / "scan300").iterdir())
        wait_until(lambda: len(started_labels(log_path)) == 2, what="scan300 started")
        watcher.signal(signal.SIGTERM)
        assert watcher.wait() == 0
    starts = [r for r in read_log(log_path) if r["event"] == "start"]
    assert all(r["time"] >= finished_writing for r in starts)
    assert {r["label"] for r in starts} == {"scan300-view000", "scan300-view001"}
