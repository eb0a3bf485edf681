"""The watcher keys scans by folder name and views by file name (a real watcher process,
real file events, the file-backed RecordingBackend)."""

from __future__ import annotations

import signal

from tests.functional.recording_backend import (
    WatcherProcess,
    read_log,
    wait_until,
    write_config,
    write_view_file,
)
from tests.functional.recording_backend import (
    started_labels as started,
)


def test_late_view_and_a_second_folder_with_the_same_id_both_run(tmp_path):
    """Before: view000 arriving after view001/view002 never ran (view002 ran twice), and
    flyscan1700 after scan1700 was logged as "handed over already" and never ran."""
    root = tmp_path / "acquisition"
    root.mkdir()
    config = write_config(
        tmp_path / "ptychoflow.toml", root, marker="scan.done", settle_seconds=0.2
    )
    log_path = tmp_path / "runs.jsonl"
    # The watcher watches the root only (deep trees cannot deafen it): a view file added
    # to a scan already handed over is found by the periodic look at the root.
    with WatcherProcess(config, log_path, service={"rescan_interval_s": 0.5}) as watcher:
        watcher.wait_for_line("watching")
        scan = root / "scan1700"
        write_view_file(scan / "view001.cxi")
        write_view_file(scan / "view002.cxi")
        (scan / "scan.done").touch()
        wait_until(lambda: len(started(log_path)) == 2, what="view001 and view002 started")

        write_view_file(scan / "view000.cxi")  # late, and first in sorted order
        wait_until(lambda: len(started(log_path)) == 3, what="the late view000 started")

        fly = root / "flyscan1700"
        write_view_file(fly / "view000.cxi")
        (fly / "scan.done").touch()
        wait_until(lambda: len(started(log_path)) == 4, what="flyscan1700 started")
        watcher.signal(signal.SIGTERM)
        assert watcher.wait() == 0
    labels = started(log_path)
    assert sorted(labels) == [
        "flyscan1700-view000",
        "scan1700-view000",
        "scan1700-view001",
        "scan1700-view002",
    ]
    assert set(labels.values()) == {1}
    dirs = {r["label"]: r["scan_dir"] for r in read_log(log_path) if r["event"] == "start"}
    assert dirs["flyscan1700-view000"] == "flyscan1700" and dirs["scan1700-view000"] == "1700"
