"""The local backend runs flows/definition.json end to end on real folders.

The compute function here is a small stand-in for ``reconstruct_view`` with the
same keyword arguments: it reads the transferred input and writes the two
result files, so every byte that reaches the acquisition side went through
TransferIn, the compute submission and TransferOut.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
import time
from pathlib import Path

import pytest

from flows.backend import STAGES, RunStatus, ViewRequest
from flows.config import Config
from flows.flow_input import load_definition
from flows.local.backend import LocalBackend
from flows.local.errors import UnknownRunError

SCAN_ID = 100
FUNCTION_ID = "00000000-0000-0000-0000-00000000f00d"


def summarise_view(input_path, output_dir, view_name, recon, beamline=None):
    """Write ``<view>.h5`` (sha256 of the input) and ``<view>.png`` into output_dir."""
    data = Path(input_path).read_bytes()
    out = Path(output_dir)
    (out / f"{view_name}.h5").write_bytes(hashlib.sha256(data).digest())
    (out / f"{view_name}.png").write_bytes(data[:16])
    return {"view": view_name, "input_bytes": len(data), "iterations": recon["iterations"]}


def reject_view(input_path, output_dir, view_name, recon, beamline=None):
    raise ValueError(f"{Path(input_path).name}: /entry_1/data_1/data is missing")


GATE = threading.Event()


def wait_for_gate(input_path, output_dir, view_name, recon, beamline=None):
    if not GATE.wait(20):
        raise TimeoutError("test gate was never opened")
    return summarise_view(input_path, output_dir, view_name, recon)


@pytest.fixture
def config(tmp_path):
    config = Config(
        acquisition_root=tmp_path / "acquisition",
        compute_root=tmp_path / "compute",
        concurrency=2,
    )
    scan = config.acquisition_root / f"scan{SCAN_ID}"
    scan.mkdir(parents=True)
    for view in range(2):
        (scan / f"view{view:03d}.cxi").write_bytes(bytes([view]) * (1000 + view))
    return config


@pytest.fixture
def threads():
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    yield executor
    GATE.set()
    executor.shutdown(wait=True)
    GATE.clear()


def view_request(view, **recon):
    return ViewRequest(
        scan_id=SCAN_ID,
        view_file=f"view{view:03d}.cxi",
        scan_folder=f"scan{SCAN_ID}",
        recon={"iterations": 3, **recon},
    )


def test_two_views_run_end_to_end_in_worker_processes(config):
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as processes:
        backend = LocalBackend(config, processes.submit, {FUNCTION_ID: summarise_view})
        try:
            backend.prepare_scan(SCAN_ID)
            assert (config.compute_root / "input" / "100").is_dir()
            assert (config.compute_root / "recon" / "100").is_dir()
            started = [backend.start_view(view_request(view)) for view in range(2)]
            progress = [backend.wait(run.run_id, timeout=60) for run in started]
        finally:
            backend.close()
    for view, result in enumerate(progress):
        assert result.status is RunStatus.SUCCEEDED, result.error
        assert result.error is None
        assert set(result.stage_seconds) == set(STAGES)
        assert all(seconds >= 0 for seconds in result.stage_seconds.values())
        assert result.output == {
            "view": f"view{view:03d}",
            "input_bytes": 1000 + view,
            "iterations": 3,
        }
        source = (config.acquisition_root / "scan100" / f"view{view:03d}.cxi").read_bytes()
        recon = config.acquisition_root / "recon" / "100"
        assert (recon / f"view{view:03d}.h5").read_bytes() == hashlib.sha256(source).digest()
        assert (recon / f"view{view:03d}.png").read_bytes() == source[:16]
    assert sorted(p.name for p in (config.acquisition_root / "recon" / "100").iterdir()) == [
        "view000.h5",
        "view000.png",
        "view001.h5",
        "view001.png",
    ]
    assert len({run.run_id for run in started}) == 2


def test_compute_failure_is_caught_and_reported_with_the_functions_message(config, threads):
    backend = LocalBackend(config, threads.submit, {FUNCTION_ID: reject_view})
    try:
        backend.prepare_scan(SCAN_ID)
        run = backend.start_view(view_request(0))
        result = backend.wait(run.run_id, timeout=30)
    finally:
        backend.close()
    assert result.status is RunStatus.FAILED
    assert (
        result.error == "compute failed: ValueError: view000.cxi: /entry_1/data_1/data is missing"
    )
    assert set(result.stage_seconds) == {"transfer_in", "compute"}
    assert result.output is None
    assert not (config.acquisition_root / "recon").exists()


def test_missing_view_file_fails_transfer_in_naming_the_path(config, threads):
    backend = LocalBackend(config, threads.submit, {FUNCTION_ID: summarise_view})
    try:
        request = ViewRequest(SCAN_ID, "view007.cxi", "scan100", {})
        result = backend.wait(backend.start_view(request).run_id, timeout=30)
    finally:
        backend.close()
    assert result.status is RunStatus.FAILED
    assert result.error.startswith("transfer_in failed: ")
    assert "'/scan100/view007.cxi' does not exist" in result.error
    assert set(result.stage_seconds) == {"transfer_in"}


def test_compute_past_its_wait_time_times_out(config, threads):
    definition = load_definition()
    definition["States"]["Reconstruct"]["WaitTime"] = 0.3
    backend = LocalBackend(
        config, threads.submit, {FUNCTION_ID: wait_for_gate}, definition=definition
    )
    try:
        backend.prepare_scan(SCAN_ID)
        result = backend.wait(backend.start_view(view_request(0)).run_id, timeout=30)
        GATE.set()
    finally:
        backend.close()
    assert result.status is RunStatus.FAILED
    assert result.error.startswith("compute failed: ActionTimeout: ")
    assert "WaitTime=0.3 s" in result.error
    assert 0.3 <= result.stage_seconds["compute"] < 5


def test_progress_shows_the_current_stage_and_close_cancels_queued_runs(config, threads):
    config.concurrency = 1
    backend = LocalBackend(config, threads.submit, {FUNCTION_ID: wait_for_gate})
    backend.prepare_scan(SCAN_ID)
    first = backend.start_view(view_request(0))
    queued = backend.start_view(view_request(1))
    deadline = time.monotonic() + 10
    while backend.poll(first.run_id).stage != "compute" and time.monotonic() < deadline:
        time.sleep(0.01)
    running = backend.poll(first.run_id)
    assert running.status is RunStatus.ACTIVE
    assert running.stage == "compute"
    assert set(running.stage_seconds) == {"transfer_in"}
    assert backend.poll(queued.run_id).status is RunStatus.ACTIVE
    assert backend.find_run(view_request(1)) == queued
    closer = threading.Thread(target=backend.close)
    closer.start()
    while backend.poll(queued.run_id).status is RunStatus.ACTIVE and time.monotonic() < deadline:
        time.sleep(0.01)
    GATE.set()
    closer.join(20)
    assert not closer.is_alive()
    assert backend.poll(first.run_id).status is RunStatus.SUCCEEDED
    cancelled = backend.poll(queued.run_id)
    assert cancelled.status is RunStatus.FAILED
    assert "cancelled" in cancelled.error


def test_unknown_runs_and_labels(config, threads):
    backend = LocalBackend(config, threads.submit, {FUNCTION_ID: summarise_view})
    try:
        with pytest.raises(UnknownRunError, match="not started by this local backend"):
            backend.poll("no-such-run")
        assert backend.find_run(view_request(0)) is None
    finally:
        backend.close()


def progress_then_gate(input_path, output_dir, view_name, recon, beamline=None):
    """Reports iteration 4 of 10 the way reconstruct_view does (recon.progress), then
    waits for the gate."""
    from recon.progress import ProgressFiles

    files = ProgressFiles(output_dir, view_name, 10)
    files.progress(4, 0.25, 0.1)
    try:
        return wait_for_gate(input_path, output_dir, view_name, recon)
    finally:
        files.close()


def test_poll_reports_the_solvers_progress_while_computing(config, threads):
    """While a view computes, poll() carries the compute function's progress (iteration,
    cost, time left) and the ledger keeps it; the finished run's output is the summary."""
    from flows.backend import RunStatus as Status
    from flows.ledger import Ledger

    backend = LocalBackend(config, threads.submit, {FUNCTION_ID: progress_then_gate})
    ledger = Ledger(config.ledger)
    try:
        backend.prepare_scan(SCAN_ID)
        request = view_request(0)
        ledger.claim(request, "local")
        run = backend.start_view(request)
        ledger.mark_started(request.scan_folder, request.view_file, run)
        deadline = time.monotonic() + 10
        progress = backend.poll(run.run_id)
        while not (progress.output or {}).get("progress") and time.monotonic() < deadline:
            time.sleep(0.01)
            progress = backend.poll(run.run_id)
        assert progress.status is Status.ACTIVE and progress.stage == "compute"
        reported = progress.output["progress"]
        assert (reported["iteration"], reported["iterations"], reported["cost"]) == (4, 10, 0.25)
        row = ledger.update_progress(request.scan_folder, request.view_file, progress)
        assert row.output["progress"]["iteration"] == 4
        GATE.set()
        done = backend.wait(run.run_id, 20)
        assert done.status is Status.SUCCEEDED and "progress" not in done.output
    finally:
        GATE.set()
        backend.close()
        ledger.close()
