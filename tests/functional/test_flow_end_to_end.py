"""The main job end to end on the local backend: real files, a real Globus Compute
engine, the real flow definition, `run-flow` as a process, the SQLite ledger."""

import signal
import sqlite3
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from flows.backend import RunStatus
from flows.ledger import Ledger
from recon.metrics import compare_objects, illuminated_region
from recon.result import read_result
from recon.simulate import write_simulated_scan
from tests.functional.cli import ptychoflow
from tests.functional.recording_backend import write_view_file

CONFIG = """
backend = "local"
acquisition_root = "acquisition"
compute_root = "compute"
ledger = "ledger.sqlite"
state_dir = "state"
[recon]
iterations = 60
backend = "numpy"
"""


@pytest.fixture
def site(tmp_path):
    (tmp_path / "ptychoflow.toml").write_text(CONFIG)
    return tmp_path


def test_three_views_through_run_flow_and_back(site):
    scan = site / "acquisition" / "scan100"
    write_simulated_scan(scan, n_views=3, detector=64, n_positions=156, photons=1e6, seed=5)

    first = ptychoflow("run", "--scan", "100", "--wait", cwd=site)
    assert first.returncode == 0, first.stdout + first.stderr

    results = site / "acquisition" / "recon" / "100"
    for view in range(3):
        result = read_result(results / f"view{view:03d}.h5")
        assert (results / f"view{view:03d}.png").stat().st_size > 1000
        truth = np.load(scan / "truth" / f"view{view:03d}.npz")
        h, w = truth["object"].shape
        region = illuminated_region(truth["positions"], truth["probe"], (h, w))
        score = compare_objects(result["object"][:h, :w], truth["object"], region)
        assert score["phase_ssim"] > 0.8, (view, score)
        # The compute side holds the same input and output, checksum-verified copies.
        assert (site / "compute" / "input" / "100" / f"view{view:03d}.cxi").exists()
        assert (site / "compute" / "recon" / "100" / f"view{view:03d}.h5").exists()

    ledger = Ledger(site / "ledger.sqlite")
    rows = ledger.runs(100)
    ledger.close()
    assert [r.status for r in rows] == [RunStatus.SUCCEEDED] * 3
    for row in rows:
        assert row.run_id and row.backend == "local" and row.attempt == 1
        for stage in ("transfer_in", "compute", "transfer_out", "other"):
            assert row.stage_seconds[stage] >= 0, (row.label, row.stage_seconds)
        assert row.stage_seconds["compute"] > 0.1
        assert row.output["iterations"] == 60

    status = ptychoflow("status", "--scan", "100", cwd=site)
    assert status.returncode == 0
    assert status.stdout.count("succeeded") == 3 and "COMPUTE" in status.stdout
    assert max(len(line) for line in status.stdout.splitlines()) <= 80
    assert rows[0].run_id not in status.stdout  # local run ids only with --wide
    wide = ptychoflow("status", "--scan", "100", "--wide", cwd=site)
    assert rows[0].run_id in wide.stdout

    again = ptychoflow("run", "--scan", "100", "--wait", cwd=site)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already succeeded; use --force to run again") == 3
    assert f"scan100: results in {site / 'acquisition' / 'recon' / '100'}/" in again.stdout
    ledger = Ledger(site / "ledger.sqlite")
    assert [r.attempt for r in ledger.runs(100)] == [1, 1, 1]  # nothing started twice
    ledger.close()


def test_corrupt_view_fails_with_its_reason_while_the_others_succeed(site):
    scan = site / "acquisition" / "scan101"
    write_simulated_scan(scan, n_views=4, detector=32, n_positions=49, photons=1e5, seed=6)
    (scan / "view001.cxi").write_bytes(b"\x89HDF\r\n truncated by a full disk")
    # A readable file whose counts are bad: it passes the launcher's quick check, the
    # compute function raises, and the flow's Catch records the failure.
    with h5py.File(scan / "view003.cxi", "r+") as view:
        view["/entry_1/data_1/data"][0, 0, 0] = np.nan

    run = ptychoflow("run", "--scan", "101", "--wait", "--iterations", "5", cwd=site)
    assert run.returncode == 1

    ledger = Ledger(site / "ledger.sqlite")
    rows = dict(enumerate(ledger.runs("scan101")))
    ledger.close()
    assert rows[0].status is RunStatus.SUCCEEDED and rows[2].status is RunStatus.SUCCEEDED
    assert rows[1].status is RunStatus.FAILED
    assert "view001.cxi" in rows[1].error
    assert rows[3].status is RunStatus.FAILED
    assert "view003.cxi" in rows[3].error and "NaN" in rows[3].error
    assert rows[3].stage_seconds["transfer_in"] >= 0  # it got as far as compute

    status = ptychoflow("status", "--scan", "101", cwd=site)
    assert "failed" in status.stdout and "view001.cxi" in status.stdout


def test_a_missing_scan_is_a_clear_error(site):
    run = ptychoflow("run", "--scan", "999", cwd=site)
    assert run.returncode == 1
    assert "999" in run.stderr and "acquisition" in run.stderr
    assert "Traceback" not in run.stderr

    (site / "acquisition" / "scan5").mkdir(parents=True)
    run = ptychoflow("run", "--scan", "999", cwd=site)
    assert run.returncode == 1
    assert "no scan folder" in run.stderr and "for 999" in run.stderr
    assert "scan folders there: scan5" in run.stderr


def test_huge_ranges_run_what_exists_and_names_are_escaped(site):
    """`--scan 0-9999999999 --views 0-9999999999` (a MemoryError before) runs every scan
    folder in range and names the gaps; a file name holding terminal escape codes is
    printed escaped by run-flow and status (it was printed raw)."""
    root = site / "acquisition"
    write_view_file(root / "scan100" / "view000.cxi")
    write_view_file(root / "scan300" / "view000.cxi")
    (root / "scan300" / "view\x1b[2J\x9b31m.cxi").write_bytes(b"not hdf5")

    run = ptychoflow(
        "run", "--scan", "0-9999999999", "--views", "0-9999999999", "--iterations", "1",
        cwd=site,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert "MemoryError" not in output and "Traceback" not in output
    assert "no scan folder" in run.stderr and "0-99, 101-299, 301-9999999999" in run.stderr
    assert "\x1b" not in output and "\x9b" not in output
    assert "scan300-view_" in run.stdout  # the label: safe characters only
    ledger = Ledger(site / "ledger.sqlite")
    rows = {(r.scan_folder, r.view_file): r for r in ledger.runs()}
    ledger.close()
    assert set(rows) == {
        ("scan100", "view000.cxi"),
        ("scan300", "view000.cxi"),
        ("scan300", "view\x1b[2J\x9b31m.cxi"),
    }
    assert rows[("scan300", "view\x1b[2J\x9b31m.cxi")].status is RunStatus.FAILED
    assert run.returncode == 1  # that view failed

    status = ptychoflow("status", cwd=site)
    assert status.returncode == 0
    assert "\x1b" not in status.stdout and "\x9b" not in status.stdout
    assert "view\\x1b[2J\\x9b31m.cxi" in status.stdout


def _fake_result(path, iterations=7):
    """A real result file, written by the result writer the compute function uses."""
    from recon.result import write_result

    path.parent.mkdir(parents=True, exist_ok=True)
    write_result(
        path,
        object=np.ones((8, 8), np.complex64),
        probe=np.ones((4, 4), np.complex64),
        cost=np.ones(iterations + 1),
        positions=np.zeros((2, 2)),
        options={"iterations": iterations, "cost": "poisson"},
        pixel_size=1e-8,
        iterations=iterations,
        devices=["cpu"],
        timings={"solve": 0.1},
        backend="numpy",
    )


def test_lost_and_damaged_ledgers_are_refused_then_rebuilt_from_results(site):
    root = site / "acquisition"
    for scan in ("scan100", "flyscan100"):
        for view in range(2):
            write_view_file(root / scan / f"view00{view}.cxi")
    _fake_result(root / "recon" / "100" / "view000.h5")
    _fake_result(root / "recon" / "100" / "view001.h5")
    _fake_result(root / "recon" / "flyscan100" / "view000.h5")
    ledger_path = site / "ledger.sqlite"
    ledger_path.write_bytes(b"")  # truncated to 0 bytes

    run = ptychoflow("run", "--scan", "scan100", cwd=site)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert str(ledger_path) in run.stderr and "ptychoflow ledger rebuild" in run.stderr
    assert ledger_path.stat().st_size == 0  # nothing ran, nothing written

    check = ptychoflow("ledger", "check", cwd=site)
    assert check.returncode == 1 and "empty" in check.stderr

    rebuild = ptychoflow("ledger", "rebuild", cwd=site)
    assert rebuild.returncode == 0, rebuild.stderr
    assert "moved the old ledger to" in rebuild.stdout
    assert list(site.glob("ledger.sqlite.damaged-*"))  # kept, not deleted
    assert ptychoflow("ledger", "check", cwd=site).returncode == 0

    ledger = Ledger(ledger_path)
    rows = {(r.scan_folder, r.view_file): r for r in ledger.runs()}
    scans = {s.folder: s for s in ledger.scans()}
    ledger.close()
    assert set(rows) == {
        ("scan100", "view000.cxi"),
        ("scan100", "view001.cxi"),
        ("flyscan100", "view000.cxi"),
    }
    assert all(r.status is RunStatus.SUCCEEDED for r in rows.values())
    assert rows[("scan100", "view001.cxi")].recon["iterations"] == 7
    assert scans["scan100"].scan_dir == "100" and scans["flyscan100"].scan_dir == "flyscan100"
    assert scans["scan100"].status.value == "submitted"  # every view has its result
    assert scans["flyscan100"].status.value == "seen"  # view001 runs when next seen

    # A damaged page: a clear error naming the file and the way out, no traceback.
    db = sqlite3.connect(ledger_path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(ledger_path, "r+b") as file:
        file.seek((page - 1) * size)
        file.write(b"\x00garbage" * (size // 8))
    status = ptychoflow("status", cwd=site)
    assert status.returncode == 1 and "Traceback" not in status.stderr
    assert str(ledger_path) in status.stderr and "ptychoflow ledger check" in status.stderr
    check = ptychoflow("ledger", "check", cwd=site)
    assert check.returncode == 1 and "malformed" in check.stderr


def _rows(ledger_path):
    if not ledger_path.exists():
        return []
    ledger = Ledger(ledger_path)
    try:
        return ledger.runs()
    finally:
        ledger.close()


@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
    ids=["SIGTERM", "SIGINT", "SIGHUP"],  # SIGHUP: a dropped ssh session (issue 16)
)
def test_a_signal_cancels_run_flow_and_a_later_run_starts_the_views_again(site, signum):
    """Before: the rows stayed 'active' for ever (and SIGTERM left a traceback-free but
    silent mess). Now: stop, close the backend, record 'cancelled by SIG...', exit 128+n."""
    scan = site / "acquisition" / "scan100"
    write_simulated_scan(scan, n_views=2, detector=32, n_positions=49, photons=1e5, seed=3)
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--scan", "100", "--iterations", "100000"],
        cwd=site,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(r.stage == "compute" for r in _rows(site / "ledger.sqlite")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no view reached the compute stage"
            time.sleep(0.2)
        process.send_signal(signum)
        _out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and f"stopped by {name}" in err
    rows = _rows(site / "ledger.sqlite")
    assert [r.status for r in rows] == [RunStatus.CANCELLED] * 2
    assert {r.error for r in rows} == {f"cancelled by {name}"}
    if signum != signal.SIGTERM:
        return  # the restart below is the same for every signal

    again = ptychoflow("run", "--scan", "100", "--iterations", "2", cwd=site)
    assert again.returncode == 0, again.stderr
    rows = _rows(site / "ledger.sqlite")
    assert [(r.status, r.attempt) for r in rows] == [(RunStatus.SUCCEEDED, 2)] * 2
