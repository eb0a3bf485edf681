"""The run ledger: exactly-once claims, state transitions, recovery queries, scans."""

from __future__ import annotations

import dataclasses
import pathlib
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from flows.backend import RunProgress, RunStatus, StartedRun, Trigger, ViewRequest
from flows.errors import (
    ConfigError,
    LedgerBusyError,
    LedgerDamagedError,
    LedgerError,
    LedgerLostError,
)
from flows.ledger import SCHEMA_VERSION, Ledger, Owner, ScanState


def request(scan_id: int = 100, view: int = 0, trigger: Trigger = Trigger.MANUAL) -> ViewRequest:
    return ViewRequest(
        scan_id=scan_id,
        view_file=f"view{view:03d}.cxi",
        scan_folder=f"scan{scan_id}",
        recon={"iterations": 5},
        trigger=trigger,
    )


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(tmp_path / "sub" / "ledger.sqlite")
    yield ledger
    ledger.close()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_schema_is_versioned_and_wal(ledger):
    db = sqlite3.connect(ledger.path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ConfigError, match="newer ptychoflow"):
        Ledger(path)


def test_not_a_database_is_a_damaged_ledger_with_the_recovery_command(tmp_path):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerDamagedError, match=str(path)) as caught:
        Ledger(path)
    assert "ptychoflow ledger rebuild" in str(caught.value)


def test_claim_once_then_refused_until_failed_or_forced(ledger):
    assert ledger.claim(request(), "local")
    assert not ledger.claim(request(), "local")  # pending
    ledger.mark_submitting("scan100", "view000.cxi")
    assert not ledger.claim(request(), "local")  # submitting
    ledger.mark_started("scan100", "view000.cxi", StartedRun("run-1", "https://app/run-1"))
    assert not ledger.claim(request(), "local", force=True)  # active: never twice, even forced
    ledger.update_progress(
        "scan100", "view000.cxi", RunProgress(RunStatus.SUCCEEDED, stage_seconds={"compute": 0.0})
    )
    assert not ledger.claim(request(), "local")  # done
    assert ledger.claim(request(), "local", force=True)
    row = ledger.get("scan100", "view000.cxi")
    assert (row.status, row.attempt, row.run_id) == (RunStatus.PENDING, 2, None)
    ledger.mark_failed("scan100", "view000.cxi", "view000.cxi: broken")
    assert ledger.claim(request(), "local")  # a failed view may be retried without force
    assert ledger.get("scan100", "view000.cxi").attempt == 3


def test_concurrent_claims_from_threads_give_each_view_to_one_thread(ledger):
    winners: list[tuple[int, int]] = []
    lock = threading.Lock()

    def claim_all():
        for view in range(20):
            if ledger.claim(request(view=view), "local"):
                with lock:
                    winners.append((threading.get_ident(), view))

    threads = [threading.Thread(target=claim_all) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(view for _, view in winners) == list(range(20))


def test_concurrent_claims_from_processes(ledger, tmp_path):
    script = (
        "import sys; from flows.ledger import Ledger; from flows.backend import ViewRequest\n"
        "l = Ledger(sys.argv[1]); won = []\n"
        "for v in range(30):\n"
        "    r = ViewRequest(7, f'v{v}.cxi', 'scan7', {})\n"
        "    if l.claim(r, 'local'): won.append(v)\n"
        "print(','.join(map(str, won)))\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(ledger.path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    won = []
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        won += [int(v) for v in out.strip().split(",") if v]
    assert sorted(won) == list(range(30))


def test_progress_and_other_time(ledger):
    ledger.claim(request(), "local")
    ledger.mark_submitting("scan100", "view000.cxi")
    ledger.mark_started("scan100", "view000.cxi", StartedRun("run-1"))
    row = ledger.update_progress(
        "scan100", "view000.cxi", RunProgress(RunStatus.ACTIVE, stage="compute")
    )
    assert (row.status, row.stage) == (RunStatus.ACTIVE, "compute")
    stages = {"transfer_in": 0.0, "compute": 0.0, "transfer_out": 0.0}
    row = ledger.update_progress(
        "scan100",
        "view000.cxi",
        RunProgress(RunStatus.SUCCEEDED, stage_seconds=stages, output={"cost": 1.5}),
    )
    assert row.status is RunStatus.SUCCEEDED and row.stage is None
    assert row.output == {"cost": 1.5}
    wall = row.finished_at - row.submitted_at
    assert row.stage_seconds["other"] == pytest.approx(wall, abs=0.5)
    # A late poll does not rewrite a finished row.
    again = ledger.update_progress(
        "scan100", "view000.cxi", RunProgress(RunStatus.FAILED, error="late")
    )
    assert again.status is RunStatus.SUCCEEDED and again.error is None


@pytest.mark.parametrize("jump_s", [86400.0, -3591.0])
def test_a_wall_clock_jump_does_not_show_in_durations(ledger, jump_s):
    """Issue 16: durations come from a steady clock (CLOCK_BOOTTIME), so a wall clock
    set back or forward between submission and the end changes nothing. The jump is
    played by moving the recorded wall-clock submission time, not the machine's clock."""
    ledger.claim(request(), "local")
    ledger.mark_submitting("scan100", "view000.cxi")
    db = sqlite3.connect(ledger.path)
    db.execute("UPDATE runs SET submitted_at = submitted_at - ?", (jump_s,))
    db.commit()
    db.close()
    ledger.mark_started("scan100", "view000.cxi", StartedRun("run-1"))
    stages = {"transfer_in": 0.0, "compute": 0.0, "transfer_out": 0.0}
    row = ledger.update_progress(
        "scan100", "view000.cxi", RunProgress(RunStatus.SUCCEEDED, stage_seconds=stages)
    )
    assert 0.0 <= row.stage_seconds["other"] < 60.0  # not 86400 s, not negative


def test_counts_and_rows_by_scan(ledger):
    for view in range(3):
        ledger.claim(request(view=view), "local")
    ledger.claim(request(scan_id=101), "local")
    ledger.mark_failed("scan100", "view001.cxi", "bad")
    counts = ledger.counts(100)
    assert counts[RunStatus.PENDING] == 2 and counts[RunStatus.FAILED] == 1
    assert counts[RunStatus.SUCCEEDED] == 0
    assert [r.view for r in ledger.runs("scan100")] == ["view000", "view001", "view002"]
    assert ledger.runs(100) == ledger.runs("scan100")  # by id: every folder with it
    assert len(ledger.runs()) == 4
    assert ledger.get("scan100", "view001.cxi").error == "bad"
    assert ledger.get("scan100", "view000.cxi").request() == dataclasses.replace(
        request(), scan_dir="100"
    )


def test_orphans_are_rows_of_dead_owners_and_taken_over_once(ledger, tmp_path):
    ledger.claim(request(view=0), "local")
    ledger.claim(request(view=1), "local")
    assert ledger.orphans("local") == []  # owned by this live process
    other = Ledger(ledger.path)
    other.owner = Owner(dead_pid(), ledger.owner.host, None)
    other.claim(request(view=2), "local")
    other.claim(request(view=3), "globus")
    orphans = ledger.orphans("local")
    assert [r.view for r in orphans] == ["view002"]
    assert ledger.take_over(orphans[0])
    assert not ledger.take_over(orphans[0])  # the row changed owner: a second recovery loses
    assert ledger.orphans("local") == []
    other.close()


def test_pid_reuse_is_not_mistaken_for_the_owner():
    me = Owner.current()
    assert me.started is not None  # Linux: /proc start time available
    assert Owner(me.pid, me.host, "another-boot:123").alive() is False
    assert Owner(me.pid, "some-other-host", None).alive() is True


def test_restart_keeps_row_and_counts_attempts(ledger):
    ledger.claim(request(), "local")
    ledger.mark_submitting("scan100", "view000.cxi")
    ledger.mark_started("scan100", "view000.cxi", StartedRun("run-1"))
    ledger.restart("scan100", "view000.cxi")
    row = ledger.get("scan100", "view000.cxi")
    assert (row.status, row.attempt, row.run_id, row.started_at) == (
        RunStatus.PENDING,
        2,
        None,
        None,
    )


def test_scans_table_records_state_and_reason(ledger):
    assert ledger.scan_seen("scan100", 100).scan_dir == "100"
    assert ledger.scan("scan100").status is ScanState.SEEN
    ledger.scan_submitted("scan100")
    assert ledger.scan("scan100").status is ScanState.SUBMITTED
    assert ledger.scan("scan100").completed_at is not None
    ledger.scan_failed("scan101", 101, "scan101: no view files matching '*.cxi'")
    record = ledger.scan("scan101")
    assert record.status is ScanState.FAILED and "no view files" in record.error
    assert [s.folder for s in ledger.scans()] == ["scan100", "scan101"]
    assert ledger.scan("scan999") is None
    assert ledger.scan(100).folder == "scan100"


def test_marking_an_unknown_row_raises(ledger):
    with pytest.raises(KeyError, match=r"scan5/view000\.cxi"):
        ledger.mark_submitting("scan5", "view000.cxi")


# -- identity: folder name and file name ---------------------------------------------------


def test_rows_are_keyed_by_file_name_not_position(ledger):
    """A view that sorts first but arrives last is a new row; the others keep theirs."""
    for name in ("view001.cxi", "view002.cxi"):
        assert ledger.claim(ViewRequest(100, name, "scan100", {}), "local")
    assert ledger.claim(ViewRequest(100, "view000.cxi", "scan100", {}), "local")
    assert not ledger.claim(ViewRequest(100, "view002.cxi", "scan100", {}), "local")
    assert [r.view_file for r in ledger.runs("scan100")] == [
        "view000.cxi",
        "view001.cxi",
        "view002.cxi",
    ]


def test_folders_sharing_an_id_get_their_own_rows_and_result_folders(ledger):
    assert ledger.scan_seen("scan100", 100).scan_dir == "100"
    assert ledger.claim(ViewRequest(100, "view000.cxi", "scan100", {}, scan_dir="100"), "local")
    ledger.mark_failed("scan100", "view000.cxi", "broken")
    # scan00100 and flyscan100 have id 100 too: neither rewrites scan100's rows.
    assert ledger.scan_seen("flyscan100", 100).scan_dir == "flyscan100"
    assert ledger.scan_seen("scan00100", 100).scan_dir == "scan00100"
    assert ledger.claim(ViewRequest(100, "view000.cxi", "flyscan100", {}), "local")
    assert ledger.scan_seen("scan100", 100).scan_dir == "100"  # kept on later sights
    assert ledger.get("scan100", "view000.cxi").error == "broken"
    assert ledger.get("flyscan100", "view000.cxi").status is RunStatus.PENDING
    assert [s.folder for s in ledger.scans()] == ["flyscan100", "scan00100", "scan100"]


def test_labels_are_readable_bounded_and_safe():
    plain = ViewRequest(100, "view003.cxi", "flyscan100", {})
    assert plain.label == "flyscan100-view003"
    assert plain.tags == [
        "ptychography",
        "scan:100",
        "folder:flyscan100",
        "view:view003",
        "trigger:manual",
        "attempt:1",
    ]
    odd = ViewRequest(100, "a b\x1b[2J.view;rm -rf" + "x" * 100 + ".cxi", "scan100", {})
    other = ViewRequest(100, "a b\x1b[2J.view;rm -rf" + "x" * 101 + ".cxi", "scan100", {})
    assert len(odd.label) <= 64 and odd.label != other.label
    assert all(c.isalnum() or c in "-_" for c in odd.label)


def test_cancelled_rows_are_terminal_and_claimed_again(ledger):
    ledger.claim(request(), "local")
    assert ledger.owned_unfinished()[0].view_file == "view000.cxi"
    assert ledger.mark_cancelled("scan100", "view000.cxi", "cancelled by SIGTERM")
    row = ledger.get("scan100", "view000.cxi")
    assert row.status is RunStatus.CANCELLED and row.error == "cancelled by SIGTERM"
    assert not ledger.mark_cancelled("scan100", "view000.cxi", "again")  # finished already
    assert ledger.owned_unfinished() == []
    assert ledger.claim(request(), "local")
    assert ledger.get("scan100", "view000.cxi").attempt == 2


# -- lost, damaged and busy ledgers --------------------------------------------------------


def _result(root, scan_dir="100", view="view000"):
    path = root / "recon" / scan_dir / f"{view}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"result")
    return path


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_lost_ledger_with_results_is_refused_naming_the_file(tmp_path, how):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.claim(request(), "local")
    ledger.close()
    result = _result(tmp_path / "acquisition")
    if how == "truncated":
        path.write_bytes(b"")
    else:
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(f"{path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(LedgerLostError) as caught:
        Ledger(path, result_roots=[tmp_path / "acquisition" / "recon"])
    message = str(caught.value)
    assert str(path) in message and str(result) in message
    assert "ptychoflow ledger rebuild" in message
    assert path.exists() == (how == "truncated")  # a missing one is not created empty
    # Without results a new installation starts with an empty ledger as before.
    result.unlink()
    Ledger(path, result_roots=[tmp_path / "acquisition" / "recon"]).close()


def test_damaged_page_is_a_clear_error_with_the_recovery_command(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    for view in range(200):
        ledger.claim(request(view=view), "local")
    ledger.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root_page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(path, "r+b") as file:  # overwrite the runs table's root page with garbage
        file.seek((root_page - 1) * page_size)
        file.write(b"\xff" * page_size)
    ledger = Ledger(path)
    try:
        with pytest.raises(LedgerDamagedError) as caught:
            ledger.runs()
    finally:
        ledger.close()
    assert str(path) in str(caught.value) and "ptychoflow ledger check" in str(caught.value)


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
db.execute("UPDATE scans SET error = 'held' WHERE 0")
print("locked", flush=True)
time.sleep(60)
"""


def test_ledger_held_by_another_process_is_busy_naming_the_holder(tmp_path, caplog):
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        began = time.monotonic()
        with pytest.raises(LedgerBusyError) as caught:
            Ledger(path, busy_timeout_s=0.5)  # opening writes (schema check): it waits
        waited = time.monotonic() - began
    finally:
        holder.kill()
        holder.wait()
    message = str(caught.value)
    assert f"pid {holder.pid}" in message and "import sqlite3" in message  # its command
    assert 0.5 <= waited < 5
    assert str(path) in message
    assert any(f"pid {holder.pid}" in r.getMessage() for r in caplog.records)  # said at once
    ledger = Ledger(path)  # the holder is gone: usable again
    assert ledger.claim(request(), "local")
    ledger.close()


def test_schema_1_ledger_is_migrated_keeping_rows(tmp_path):
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE runs (scan_id INTEGER NOT NULL, view INTEGER NOT NULL,
          view_file TEXT NOT NULL, scan_folder TEXT NOT NULL, recon TEXT NOT NULL,
          run_id TEXT, backend TEXT NOT NULL, status TEXT NOT NULL, trigger TEXT NOT NULL,
          attempt INTEGER NOT NULL DEFAULT 1, owner_pid INTEGER, owner_host TEXT,
          owner_started TEXT, created_at REAL NOT NULL, submitted_at REAL, started_at REAL,
          finished_at REAL, stage TEXT, stage_seconds TEXT NOT NULL DEFAULT '{}', error TEXT,
          web_url TEXT, output TEXT, updated_at REAL NOT NULL, UNIQUE (scan_id, view));
        CREATE INDEX runs_by_status ON runs (status);
        CREATE TABLE scans (scan_id INTEGER PRIMARY KEY, folder TEXT NOT NULL,
          first_seen REAL NOT NULL, completed_at REAL, status TEXT NOT NULL, error TEXT,
          updated_at REAL NOT NULL);
        INSERT INTO runs (scan_id, view, view_file, scan_folder, recon, backend, status,
          trigger, created_at, updated_at)
          VALUES (100, 0, 'view000.cxi', 'scan100', '{}', 'local', 'succeeded', 'auto', 1, 1);
        INSERT INTO scans VALUES (100, 'scan100', 1, 2, 'submitted', NULL, 2);
        PRAGMA user_version = 1;
        """
    )
    db.close()
    ledger = Ledger(path)
    row = ledger.get("scan100", "view000.cxi")
    assert row.status is RunStatus.SUCCEEDED and row.scan_dir == "100"
    assert ledger.scan("scan100").scan_dir == "100"
    ledger.close()


def test_schema_2_ledger_is_migrated_to_3_keeping_its_rows(tmp_path):
    """Schema 3 (issue 16) adds the input fingerprint and the transient-retry count."""
    path = tmp_path / "v2.sqlite"
    made = Ledger(path)
    made.claim(request(), "local")
    made.close()
    db = sqlite3.connect(path)
    for column in (
        "input_size",
        "input_mtime_ns",
        "input_hash",
        "transient_retries",
        "submitted_clock",
    ):
        db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    ledger = Ledger(path)
    try:
        row = ledger.get("scan100", "view000.cxi")
        assert row is not None and row.status is RunStatus.PENDING
        assert row.input is None and row.transient_retries == 0
    finally:
        ledger.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    db.close()


def test_read_only_ledger_reads_and_refuses_writes(ledger, tmp_path):
    ledger.claim(request(), "local")
    reader = Ledger(ledger.path, read_only=True)
    try:
        assert [r.view_file for r in reader.runs()] == ["view000.cxi"]
        with pytest.raises(LedgerError, match="cannot open it for writing"):
            reader.claim(request(view=1), "local")
    finally:
        reader.close()
    with pytest.raises(LedgerError, match="does not exist"):
        Ledger(tmp_path / "nowhere.sqlite", read_only=True)
    assert not (tmp_path / "nowhere.sqlite").exists()
