"""The watcher against a hostile or careless acquisition root, as real processes with real
file-system events: deep trees, a crashing observer, ids too long to be ids, a busy
ledger, files that arrive late, odd file names and symlinks. It must keep starting
later scans (or exit non-zero so systemd restarts it) and never print a traceback."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

from flows.ledger import Ledger, ScanState
from tests.functional.recording_backend import (
    WatcherProcess,
    wait_until,
    write_scan,
    write_view_file,
)
from tests.functional.recording_backend import (
    started_labels as started,
)

DEPTH = 1200
HUGE = "scan99999999999999999999"


def no_traceback(watcher: WatcherProcess) -> None:
    text = "\n".join(watcher.lines)
    assert "Traceback" not in text and "Logging error" not in text, text


@pytest.fixture
def remove_afterwards():
    """Folders to delete after the test with ``rm -rf`` (pytest's own clean-up recurses
    and cannot delete a 1200-deep tree)."""
    paths: list = []
    yield paths
    for path in paths:
        subprocess.run([shutil.which("rm") or "rm", "-rf", str(path)], check=False)


def deep_tree(top, depth: int = DEPTH) -> None:
    """``top/d/d/.../d/file`` ``depth`` folders deep (built one level at a time)."""
    path = top
    path.mkdir()
    for _ in range(depth):
        path = path / "d"
        path.mkdir()
    (path / "file").write_bytes(b"x")


def stop(watcher: WatcherProcess) -> None:
    watcher.signal(signal.SIGTERM)
    assert watcher.wait() == 0, "\n".join(watcher.lines)


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_a_1200_deep_tree_inside_a_scan_does_not_deafen_the_watcher(
    setup, tmp_path, polling, remove_afterwards
):
    root, config, log_path, _ = setup
    remove_afterwards.extend([root, tmp_path / "elsewhere"])
    with WatcherProcess(config, log_path, polling=polling) as watcher:
        watcher.wait_for_line("watching")
        write_scan(root, 100, views=1, marker=None)
        deep_tree(tmp_path / "elsewhere")
        os.rename(tmp_path / "elsewhere", root / "scan100" / "moved-in")
        (root / "scan100" / "scan.done").touch()
        wait_until(lambda: started(log_path)["scan100-view000"], what="scan100 started")
        write_scan(root, 101, views=1)
        wait_until(lambda: started(log_path)["scan101-view000"], timeout_s=10, what="scan101")
        stop(watcher)
        no_traceback(watcher)
    # A restart finds the deep tree on disk (catch-up) and still works.
    with WatcherProcess(config, log_path, polling=polling) as again:
        again.wait_for_line("watching")
        write_scan(root, 102, views=1)
        wait_until(lambda: started(log_path)["scan102-view000"], timeout_s=10, what="scan102")
        stop(again)
        no_traceback(again)
    assert set(started(log_path).values()) == {1}


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_an_observer_that_crashes_is_restarted_and_later_scans_start(setup, polling):
    root, config, log_path, _ = setup
    with WatcherProcess(config, log_path, polling=polling, sabotage_observer="on_event") as w:
        w.wait_for_line("watching")
        (root / "crash-observer").touch()  # the emitter thread raises on this event
        w.wait_for_line("observer restarted", timeout_s=10)
        write_scan(root, 200, views=1)
        wait_until(lambda: started(log_path)["scan200-view000"], timeout_s=10, what="scan200")
        stop(w)
        no_traceback(w)
    assert any("injected emitter crash" in line for line in w.lines)


def test_an_observer_gone_deaf_is_noticed_and_restarted(setup):
    """Its inotify descriptor closed, the observer's threads live on but report nothing:
    the periodic look finds the unreported scan, starts it and restarts the observer."""
    root, config, log_path, _ = setup
    with WatcherProcess(
        config,
        log_path,
        sabotage_observer="close_inotify_fd_on_sigusr1",
        service={"rescan_interval_s": 0.5},
    ) as watcher:
        watcher.wait_for_line("watching")
        watcher.signal(signal.SIGUSR1)
        watcher.wait_for_line("inotify descriptor closed")
        write_scan(root, 210, views=1)
        wait_until(lambda: started(log_path)["scan210-view000"], timeout_s=15, what="scan210")
        watcher.wait_for_line("did not report scan210", timeout_s=10)
        watcher.wait_for_line("observer restarted", timeout_s=10)
        write_scan(root, 211, views=1)
        wait_until(lambda: started(log_path)["scan211-view000"], timeout_s=10, what="scan211")
        time.sleep(2.0 + 2 * 0.5)  # the grace time and two periodic looks
        # The restarted observer reported scan211 (else the look would have warned again).
        assert not any("did not report scan211" in line for line in watcher.lines)
        stop(watcher)
        no_traceback(watcher)


def test_an_observer_that_keeps_dying_makes_the_watcher_exit_1(setup):
    _root, config, log_path, _ = setup
    with WatcherProcess(
        config,
        log_path,
        sabotage_observer="always",
        service={"max_observer_restarts": 2},
    ) as watcher:
        assert watcher.wait(timeout_s=20) == 1
        watcher.wait_for_line("exiting with code 1")
        no_traceback(watcher)


def test_a_scan_id_too_long_is_recorded_as_failed_and_later_scans_run(setup):
    root, config, log_path, _ = setup
    huge = root / HUGE
    write_view_file(huge / "view000.cxi")
    (huge / "scan.done").touch()
    for attempt, scan_id in enumerate((300, 301)):
        with WatcherProcess(config, log_path) as watcher:
            watcher.wait_for_line("watching")
            write_scan(root, scan_id, views=1)
            wait_until(
                lambda s=scan_id: started(log_path)[f"scan{s}-view000"],
                what=f"scan{scan_id}",
            )
            line = watcher.wait_for_line(f"{HUGE}: failed")
            assert "is not a number of 1 to 18 digits" in line
            if attempt == 0:  # a new event for it is not logged again
                (huge / "view001.cxi").write_bytes(b"")
            stop(watcher)
            no_traceback(watcher)
            assert sum(f"{HUGE}: failed" in line for line in watcher.lines) == 1
    assert sorted(started(log_path)) == ["scan300-view000", "scan301-view000"]


def test_a_busy_ledger_is_waited_for_and_the_watcher_goes_on(setup):
    root, config, log_path, ledger_path = setup
    with WatcherProcess(config, log_path, service={"ledger_busy_timeout_s": 0.2}) as watcher:
        watcher.wait_for_line("watching")
        wait_until(ledger_path.exists, what="ledger created")
        holder = sqlite3.connect(ledger_path, isolation_level=None)  # another process's lock
        holder.execute("BEGIN EXCLUSIVE")
        try:
            write_scan(root, 400, views=2)
            line = watcher.wait_for_line("is busy", timeout_s=10)
            assert str(ledger_path) in line
            assert watcher.process.poll() is None
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_until(lambda: len(started(log_path)) == 2, timeout_s=15, what="scan400 started")
        stop(watcher)
        no_traceback(watcher)
    assert set(started(log_path)) == {"scan400-view000", "scan400-view001"}


def test_a_view_file_that_arrives_after_its_scan_was_started_is_started_too(setup):
    root, config, log_path, _ = setup
    with WatcherProcess(config, log_path, service={"rescan_interval_s": 0.3}) as watcher:
        watcher.wait_for_line("watching")
        write_scan(root, 500, views=2)
        wait_until(lambda: len(started(log_path)) == 2, what="scan500 started")
        write_view_file(root / "scan500" / "view002.cxi")
        wait_until(lambda: started(log_path)["scan500-view002"], timeout_s=10, what="late view")
        stop(watcher)
        no_traceback(watcher)
    # Restarted: a view written while no watcher ran is started too, nothing twice.
    write_view_file(root / "scan500" / "view003.cxi")
    with WatcherProcess(config, log_path) as again:
        wait_until(lambda: started(log_path)["scan500-view003"], timeout_s=10, what="view003")
        stop(again)
    counts = started(log_path)
    assert set(counts) == {f"scan500-view{v:03d}" for v in range(4)}
    assert set(counts.values()) == {1}


def test_odd_names_symlinks_out_of_the_root_and_vanishing_scans(setup, tmp_path):
    root, config, log_path, ledger_path = setup
    outside = write_scan(tmp_path / "elsewhere", 700, views=1)
    with WatcherProcess(config, log_path, polling=True) as watcher:
        watcher.wait_for_line("watching")
        scan = root / "scan600"
        write_view_file(scan / "view a ä.cxi")
        write_view_file(scan / "view d.cxi")
        (scan / "view b \u202e\u00a0.cxi").write_bytes(b"")  # right-to-left override
        (scan / "view c \x1b]0;pwned\x07\x1b[31m\nred.cxi").write_bytes(b"not HDF5")
        (scan / "scan.done").touch()
        (root / "scan700").symlink_to(outside, target_is_directory=True)
        gone = write_scan(root, 800, views=1, marker=None)
        for item in gone.iterdir():
            item.unlink()
        gone.rmdir()  # deleted while waiting for its marker
        wait_until(lambda: len(started(log_path)) == 2, what="the two readable views")
        write_scan(root, 900, views=1)
        wait_until(lambda: started(log_path)["scan900-view000"], what="scan900 started")
        ledger = Ledger(ledger_path)
        wait_until(lambda: ledger.scan(700) is not None, what="scan700 recorded")
        assert ledger.scan(700).status is ScanState.FAILED
        assert "outside the acquisition root" in ledger.scan(700).error
        assert [r.status.value for r in ledger.runs(700)] == []
        failed = [r for r in ledger.runs(600) if r.error]
        # Names holding invisible or control characters are refused as look-alikes
        # (issue 16); either way each fails on its own, with its reason.
        assert len(failed) == 2 and all(
            "not a readable HDF5" in r.error or "invisible characters" in r.error for r in failed
        )
        ledger.close()
        stop(watcher)
        no_traceback(watcher)
    text = "\n".join(watcher.lines)
    assert "\x1b" not in text and "\x07" not in text
    assert r"\x1b]0;pwned\x07\x1b[31m\nred.cxi" in text
    assert "\u202e" not in text
    assert "view b \\u202e\\u00a0.cxi" in text  # escaped override and no-break space
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    assert all(stamp.match(line) for line in watcher.lines), text  # one event, one line
    assert "scan700" not in started(log_path) and not any(
        label.startswith("scan700") for label in started(log_path)
    )


def test_a_file_name_that_is_not_utf8_fails_only_its_own_view(setup):
    """JSON, SQLite text and Globus Transfer need UTF-8 names: that view is failed, under
    its name with the odd byte written as \\xff, and the others start; the scan is done."""
    root, config, log_path, ledger_path = setup
    with WatcherProcess(config, log_path) as watcher:
        watcher.wait_for_line("watching")
        scan = root / "scan650"
        write_view_file(scan / "view000.cxi")
        write_view_file(os.fsdecode(bytes(scan) + b"/view001 \xff.cxi"))
        write_view_file(scan / "view002.cxi")
        (scan / "scan.done").touch()
        watcher.wait_for_line("scan650: ")
        wait_until(lambda: len(started(log_path)) >= 2, timeout_s=5, what="the UTF-8 views")
        ledger = Ledger(ledger_path)
        wait_until(lambda: len(ledger.runs(650)) == 3, what="three rows for scan650")
        rows = {r.view_file: r for r in ledger.runs(650)}
        assert set(rows) == {"view000.cxi", "view001 \\xff.cxi", "view002.cxi"}
        assert "not valid UTF-8" in rows["view001 \\xff.cxi"].error
        assert "rename" in rows["view001 \\xff.cxi"].error
        assert not rows["view000.cxi"].error and not rows["view002.cxi"].error
        ledger.close()
        stop(watcher)
        no_traceback(watcher)
    assert started(log_path).keys() >= {"scan650-view000", "scan650-view002"}


def test_an_outage_leaves_views_pending_and_the_watcher_hands_them_over_again(setup):
    """The backend refuses every start for longer than the launcher's retries (3 tries
    here): the views stay pending, never failed, and the watcher hands the scan over
    again on its own once the backend answers, each view started once."""
    root, config, log_path, ledger_path = setup
    with WatcherProcess(config, log_path, backend={"transient_errors": 4}) as watcher:
        watcher.wait_for_line("watching")
        write_scan(root, 600, views=2)
        watcher.wait_for_line("deferred", timeout_s=10)
        wait_until(lambda: len(started(log_path)) == 2, timeout_s=20, what="scan600 started")
        stop(watcher)
        no_traceback(watcher)
    assert set(started(log_path).values()) == {1}
    ledger = Ledger(ledger_path, read_only=True)
    try:
        rows = ledger.runs("scan600")
        assert all(row.status.value not in ("failed", "cancelled") for row in rows), rows
        assert ledger.scan("scan600").status is not ScanState.FAILED
    finally:
        ledger.close()
    assert not any("failed to start" in line for line in watcher.lines)
