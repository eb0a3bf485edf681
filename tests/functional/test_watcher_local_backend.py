"""The watcher as deployed on one machine: a real `ptychoflow watch` process on the
local backend (real Compute engine, real flow), real filesystem events."""

import signal
import subprocess
import sys
import time

import pytest

from flows.backend import RunStatus
from flows.ledger import Ledger
from recon.simulate import write_simulated_scan

CONFIG = """
backend = "local"
acquisition_root = "acquisition"
compute_root = "compute"
ledger = "ledger.sqlite"
state_dir = "state"
marker = "scan.done"
[recon]
iterations = 5
backend = "numpy"
"""


@pytest.mark.slow
def test_watch_reconstructs_a_new_scan_once_and_stops_cleanly(tmp_path):
    (tmp_path / "ptychoflow.toml").write_text(CONFIG)
    (tmp_path / "acquisition").mkdir()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "watch", "--config", "ptychoflow.toml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.0)
        write_simulated_scan(
            tmp_path / "acquisition" / "scan200",
            n_views=2,
            detector=32,
            n_positions=49,
            photons=1e5,
            seed=1,
            marker="scan.done",
        )
        results = tmp_path / "acquisition" / "recon" / "200"
        deadline = time.monotonic() + 180
        expected = [results / f"view00{v}.{ext}" for v in (0, 1) for ext in ("h5", "png")]
        while not all(p.exists() for p in expected):
            assert watcher.poll() is None, watcher.stdout.read()
            assert time.monotonic() < deadline, "results did not come back in time"
            time.sleep(0.5)
        # Let the watcher see the runs finish and record them.
        deadline = time.monotonic() + 30
        while True:
            ledger = Ledger(tmp_path / "ledger.sqlite")
            rows = ledger.runs(200)
            ledger.close()
            if len(rows) == 2 and all(r.status.terminal for r in rows):
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.5)
    finally:
        watcher.send_signal(signal.SIGTERM)
        output, _ = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, output
    assert [r.status for r in rows] == [RunStatus.SUCCEEDED] * 2
    assert [r.attempt for r in rows] == [1, 1]
    assert all(r.trigger.value == "auto" for r in rows)
    assert "scan200" in output or "scan 200" in output
