"""The main job end to end on the local backend: real files, a real Globus Compute
engine, the real flow definition, `run-flow` as a process, the SQLite ledger."""

import h5py
import numpy as np
import pytest

from flows.backend import RunStatus
from flows.ledger import Ledger
from recon.metrics import compare_objects, illuminated_region
from recon.result import read_result
from recon.simulate import write_simulated_scan
from tests.functional.cli import ptychoflow

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
    assert status.stdout.count("succeeded") == 3 and "TRANSFER_IN" in status.stdout

    again = ptychoflow("run", "--scan", "100", "--wait", cwd=site)
    assert again.returncode == 0, again.stderr
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
    rows = {r.view: r for r in ledger.runs(101)}
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
    assert "scan 999" in run.stderr and "acquisition" in run.stderr
    assert "Traceback" not in run.stderr

    (site / "acquisition" / "scan5").mkdir(parents=True)
    run = ptychoflow("run", "--scan", "999", cwd=site)
    assert run.returncode == 1
    assert "scan 999: no folder" in run.stderr and "scan ids found there: 5" in run.stderr
