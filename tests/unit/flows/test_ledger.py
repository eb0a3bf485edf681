"""The run ledger: exactly-once claims, state transitions, recovery queries, scans."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import pytest

from flows.backend import RunProgress, RunStatus, StartedRun, Trigger, ViewRequest
from flows.errors import ConfigError
from flows.ledger import SCHEMA_VERSION, Ledger, Owner, ScanState


def request(scan_id: int = 100, view: int = 0, trigger: Trigger = Trigger.MANUAL) -> ViewRequest:
    return ViewRequest(
        scan_id=scan_id,
        view=view,
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


def test_not_a_database_is_a_config_error(tmp_path):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match=str(path)):
        Ledger(path)


def test_claim_once_then_refused_until_failed_or_forced(ledger):
    assert ledger.claim(request(), "local")
    assert not ledger.claim(request(), "local")  # pending
    ledger.mark_submitting(100, 0)
    assert not ledger.claim(request(), "local")  # submitting
    ledger.mark_started(100, 0, StartedRun("run-1", "https://app/run-1"))
    assert not ledger.claim(request(), "local", force=True)  # active: never twice, even forced
    ledger.update_progress(100, 0, RunProgress(RunStatus.SUCCEEDED, stage_seconds={"compute": 0.0}))
    assert not ledger.claim(request(), "local")  # done
    assert ledger.claim(request(), "local", force=True)
    row = ledger.get(100, 0)
    assert (row.status, row.attempt, row.run_id) == (RunStatus.PENDING, 2, None)
    ledger.mark_failed(100, 0, "view000.cxi: broken")
    assert ledger.claim(request(), "local")  # a failed view may be retried without force
    assert ledger.get(100, 0).attempt == 3


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
        "    r = ViewRequest(7, v, f'v{v}.cxi', 'scan7', {})\n"
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
    ledger.mark_submitting(100, 0)
    ledger.mark_started(100, 0, StartedRun("run-1"))
    row = ledger.update_progress(100, 0, RunProgress(RunStatus.ACTIVE, stage="compute"))
    assert (row.status, row.stage) == (RunStatus.ACTIVE, "compute")
    stages = {"transfer_in": 0.0, "compute": 0.0, "transfer_out": 0.0}
    row = ledger.update_progress(
        100, 0, RunProgress(RunStatus.SUCCEEDED, stage_seconds=stages, output={"cost": 1.5})
    )
    assert row.status is RunStatus.SUCCEEDED and row.stage is None
    assert row.output == {"cost": 1.5}
    wall = row.finished_at - row.submitted_at
    assert row.stage_seconds["other"] == pytest.approx(wall)
    # A late poll does not rewrite a finished row.
    again = ledger.update_progress(100, 0, RunProgress(RunStatus.FAILED, error="late"))
    assert again.status is RunStatus.SUCCEEDED and again.error is None


def test_counts_and_rows_by_scan(ledger):
    for view in range(3):
        ledger.claim(request(view=view), "local")
    ledger.claim(request(scan_id=101), "local")
    ledger.mark_failed(100, 1, "bad")
    counts = ledger.counts(100)
    assert counts[RunStatus.PENDING] == 2 and counts[RunStatus.FAILED] == 1
    assert counts[RunStatus.SUCCEEDED] == 0
    assert [r.view for r in ledger.runs(100)] == [0, 1, 2]
    assert len(ledger.runs()) == 4
    assert ledger.get(100, 1).error == "bad"
    assert ledger.get(100, 0).request() == request()


def test_orphans_are_rows_of_dead_owners_and_taken_over_once(ledger, tmp_path):
    ledger.claim(request(view=0), "local")
    ledger.claim(request(view=1), "local")
    assert ledger.orphans("local") == []  # owned by this live process
    other = Ledger(ledger.path)
    other.owner = Owner(dead_pid(), ledger.owner.host, None)
    other.claim(request(view=2), "local")
    other.claim(request(view=3), "globus")
    orphans = ledger.orphans("local")
    assert [r.view for r in orphans] == [2]
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
    ledger.mark_submitting(100, 0)
    ledger.mark_started(100, 0, StartedRun("run-1"))
    ledger.restart(100, 0)
    row = ledger.get(100, 0)
    assert (row.status, row.attempt, row.run_id, row.started_at) == (
        RunStatus.PENDING,
        2,
        None,
        None,
    )


def test_scans_table_records_state_and_reason(ledger):
    ledger.scan_seen(100, "scan100")
    assert ledger.scan(100).status is ScanState.SEEN
    ledger.scan_submitted(100)
    assert ledger.scan(100).status is ScanState.SUBMITTED
    assert ledger.scan(100).completed_at is not None
    ledger.scan_failed(101, "scan101", "scan101: no view files matching '*.cxi'")
    record = ledger.scan(101)
    assert record.status is ScanState.FAILED and "no view files" in record.error
    assert [s.scan_id for s in ledger.scans()] == [100, 101]
    assert ledger.scan(999) is None


def test_marking_an_unknown_row_raises(ledger):
    with pytest.raises(KeyError, match="scan 5 view 0"):
        ledger.mark_submitting(5, 0)
