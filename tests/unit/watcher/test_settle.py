"""The settle stage with real files and an injected monotonic clock."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from watcher.settle import SettleTracker, file_opens


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_view(path):
    with h5py.File(path, "w") as file:
        file["/entry_1/data_1/data"] = np.zeros((2, 4, 4), np.float32)


def test_marker_mode_waits_for_the_marker_only(tmp_path):
    clock = Clock()
    scan = tmp_path / "scan1"
    scan.mkdir()
    write_view(scan / "view000.cxi")
    tracker = SettleTracker("scan.done", settle_seconds=1.0, clock=clock)
    assert tracker.touch(scan)
    clock.now += 3600  # however long it stays unchanged
    assert tracker.ready() == []
    (scan / "scan.done").touch()
    assert tracker.ready() == [scan]
    assert tracker.ready() == []  # reported once
    assert not tracker.touch(scan)  # later events for a reported scan are ignored
    assert tracker.ready() == []


def test_settle_mode_needs_quiet_time_and_files_that_open(tmp_path):
    clock = Clock()
    scan = tmp_path / "scan2"
    scan.mkdir()
    tracker = SettleTracker(None, settle_seconds=2.0, clock=clock, give_up_seconds=100)
    tracker.touch(scan)
    clock.now += 5
    assert tracker.ready() == []  # an empty folder is not a complete scan
    write_view(scan / "view000.cxi")
    tracker.touch(scan)
    clock.now += 1.5
    assert tracker.ready() == []  # changed 1.5 s ago
    tracker.touch(scan)  # another change restarts the wait
    clock.now += 1.5
    assert tracker.ready() == []
    clock.now += 0.6
    assert tracker.ready() == [scan]


def test_settle_mode_waits_while_an_hdf5_file_is_open_for_writing(tmp_path):
    clock = Clock()
    scan = tmp_path / "scan3"
    scan.mkdir()
    tracker = SettleTracker("", settle_seconds=1.0, clock=clock, give_up_seconds=100)
    # Another process (the instrument) holds the file open for writing.
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, h5py; f = h5py.File(sys.argv[1], 'w');"
            "f.create_dataset('/entry_1/data_1/data', (0, 4, 4), maxshape=(None, 4, 4));"
            "f.flush(); print('open', flush=True); sys.stdin.read(); f.close()",
            str(scan / "view000.cxi"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "open"
        tracker.touch(scan)
        clock.now += 10
        assert not file_opens(scan / "view000.cxi")  # the HDF5 library locks it
        assert tracker.ready() == []
    finally:
        writer.stdin.close()
        assert writer.wait(timeout=30) == 0
    clock.now += 1.1
    first_look = tracker.ready()
    clock.now += 1.1  # closing the file is a change: at most one more quiet period
    assert first_look + tracker.ready() == [scan]


def test_settle_mode_gives_up_on_a_file_that_never_opens(tmp_path):
    clock = Clock()
    scan = tmp_path / "scan4"
    scan.mkdir()
    (scan / "view000.cxi").write_bytes(b"garbage, not HDF5")
    tracker = SettleTracker(None, settle_seconds=1.0, clock=clock, give_up_seconds=30)
    tracker.touch(scan)
    clock.now += 5
    assert tracker.ready() == []
    clock.now += 30
    assert tracker.ready() == [scan]  # handed over so the failure gets recorded


def test_catch_up_age_counts_towards_the_settle_time(tmp_path):
    clock = Clock()
    scan = tmp_path / "scan5"
    scan.mkdir()
    write_view(scan / "view000.cxi")
    tracker = SettleTracker(None, settle_seconds=5.0, clock=clock)
    tracker.touch(scan, age_seconds=60)  # last written a minute before the watcher started
    assert tracker.ready() == [scan]


def test_forget_and_removed_folders(tmp_path):
    clock = Clock()
    tracker = SettleTracker("scan.done", settle_seconds=1.0, clock=clock, give_up_seconds=10)
    gone = tmp_path / "scan6"
    tracker.touch(gone)
    clock.now += 11
    assert tracker.ready() == [] and tracker.pending == []
    known = tmp_path / "scan7"
    known.mkdir()
    (known / "scan.done").touch()
    tracker.touch(known)
    tracker.forget(known)
    assert tracker.ready() == []


def test_settle_mode_sees_changes_without_events(tmp_path):
    """No event arrives for writes inside a scan (only the root is watched): the stage
    compares listings, so a file that grows restarts the wait."""
    clock = Clock()
    scan = tmp_path / "scan8"
    scan.mkdir()
    write_view(scan / "view000.cxi")
    tracker = SettleTracker(None, settle_seconds=2.0, clock=clock, give_up_seconds=100)
    tracker.touch(scan)
    clock.now += 1
    write_view(scan / "view001.cxi")  # no touch(): nobody told the tracker
    clock.now += 1.1
    assert tracker.ready() == []  # the listing changed since touch()
    clock.now += 2.1
    assert tracker.ready() == [scan]


def test_only_the_scan_folders_own_entries_are_looked_at(tmp_path):
    clock = Clock()
    scan = tmp_path / "scan9"
    scan.mkdir()
    write_view(scan / "view000.cxi")
    deep = scan / "sub"
    deep.mkdir()
    (deep / "half-written.cxi").write_bytes(b"not HDF5 yet")  # below the depth looked at
    tracker = SettleTracker(None, settle_seconds=1.0, clock=clock, give_up_seconds=100)
    tracker.touch(scan)
    clock.now += 1.1
    (deep / "half-written.cxi").write_bytes(b"still changing")
    assert tracker.ready() == [scan]


def test_reopen_tracks_a_reported_scan_again(tmp_path):
    clock = Clock()
    scan = tmp_path / "scan10"
    scan.mkdir()
    (scan / "scan.done").touch()
    tracker = SettleTracker("scan.done", settle_seconds=1.0, clock=clock)
    tracker.touch(scan)
    assert tracker.ready() == [scan] and tracker.is_reported(scan)
    tracker.reopen(scan)
    assert tracker.touch(scan)
    # A reopened scan (a view file arrived after the hand-over) waits out the settle
    # time even though its marker is there: the late file may still be being written.
    assert tracker.ready() == []
    clock.now += 1.5
    assert tracker.ready() == [scan]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_a_folder_that_cannot_be_listed_is_handed_over_after_the_give_up_time(tmp_path):
    clock = Clock()
    scan = tmp_path / "scan11"
    scan.mkdir()
    (scan / "scan.done").touch()
    scan.chmod(0o000)
    try:
        tracker = SettleTracker("scan.done", settle_seconds=1.0, clock=clock, give_up_seconds=30)
        tracker.touch(scan)
        clock.now += 5
        assert tracker.ready() == []  # the marker cannot be seen
        clock.now += 30
        assert tracker.ready() == [scan]  # the launcher records why it cannot be listed
    finally:
        scan.chmod(0o755)


def test_beamline_scan_is_complete_when_its_own_files_are_all_there(tmp_path):
    """Settle rule with [beamline]: the master file, the positions file and every data
    file the master links to must be present (no Ptychodus needed for this)."""
    import functools

    from recon.beamline import BeamlineSettings, missing_parts

    settings = BeamlineSettings.from_dict({"reader": "APS_Velociprobe"})
    clock = Clock()
    scan = tmp_path / "fly042"
    scan.mkdir()
    with h5py.File(scan / "fly042_master.h5", "w") as master:
        master["entry/data/data_000001"] = h5py.ExternalLink("fly042_data_000001.h5", "/d")
    tracker = SettleTracker(
        None,
        settle_seconds=1.0,
        clock=clock,
        give_up_seconds=1e6,
        missing=functools.partial(missing_parts, settings=settings),
    )
    tracker.touch(scan)
    clock.now += 2
    assert tracker.ready() == []  # no positions file, no data file: quiet is not enough
    (scan / "fly042_0.txt").write_text("0,0,0,0,0,0,0,0\n")
    tracker.touch(scan)
    clock.now += 2
    assert tracker.ready() == []
    assert "fly042_data_000001.h5" in missing_parts(scan, settings)
    with h5py.File(scan / "fly042_data_000001.h5", "w") as data:
        data["d"] = np.zeros((1, 8, 8), np.uint32)
    tracker.touch(scan)
    clock.now += 2
    assert tracker.ready() == [scan]
