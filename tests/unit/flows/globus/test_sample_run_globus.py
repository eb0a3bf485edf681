"""``check --sample-run`` through the real GlobusBackend, HTTP mocked at the transport.

Service behaviour relied on: ``POST /flows/{id}/run`` answers the new ``run_id``
(Flows OpenAPI, ``run_flow``); ``GET /runs/{id}`` gives the status and, once
SUCCEEDED, the run's final state under ``details.output`` (Globus Flows docs, "Run
status"); the Compute action provider v3 puts each task's return value at
``details.results[i].output`` (Globus Compute docs, "Compute action provider"); the run
log's ``ActionStarted`` / ``ActionCompleted`` events carry ``details.state_name`` and
``time``; a Transfer delete task is submitted to ``POST /v0.10/delete`` with a
submission id and read back with ``GET /v0.10/task/{id}`` (Transfer API docs).
TransferOut is simulated by writing the result file where the flow puts it.
"""

from __future__ import annotations

import json

import globus_sdk
import pytest
import responses
from globus_sdk.testing import RegisteredResponse

from flows.config import Config, GlobusSettings
from flows.globus import auth
from flows.globus.backend import GlobusBackend
from flows.globus.sample_run import SampleRun
from tests.unit.flows.globus.sent import sent_requests

FLOW_ID = "24bc4997-b483-4c25-a19c-64b0afc00743"
RUN_ID = "7c1d9a3e-5b2f-4e8a-9c0d-1e2f3a4b5c6d"
COMPUTE = "c0ffee00-1234-4c61-8d0a-6a1e5b7c9d20"
FLOWS = "https://flows.automate.globus.org"


@pytest.fixture
def config(tmp_path):
    config = Config(
        backend="globus",
        acquisition_root=tmp_path / "acquisition",
        state_dir=tmp_path / "state",
        globus=GlobusSettings(compute_collection=COMPUTE, compute_base="/p"),
    )
    config.acquisition_root.mkdir()
    return config


def make_backend(config):
    null = globus_sdk.NullAuthorizer()
    return GlobusBackend(
        config,
        flow_id=FLOW_ID,
        input_builder=lambda request: {"view": request.view_file},
        flows_client=auth.flows_client(authorizer=null),
        run_client=auth.specific_flow_client(FLOW_ID, authorizer=null),
        transfer_client=auth.transfer_client(authorizer=null),
    )


def gpu_worker(summary):
    """What a Polaris worker adds to the summary (functions.code_identity.worker_identity)."""
    return {
        **summary,
        "backend": "cupy",
        "gpus": [1],
        "worker": {
            "uid": 31337,
            "user": "beamline",
            "cuda_visible_devices": "1",
            "cupy_version": "13.3.0",
            "cuda_driver_version": 12040,
        },
    }


def register_service(config, tmp_path, monkeypatch, *, worker=gpu_worker):
    """Flows and Transfer as they answer a run that succeeds; the compute step runs the
    real reconstruct_view on the CPU into the acquisition side's recon folder."""
    from functions.reconstruct import reconstruct_view

    monkeypatch.setenv("PTYCHOFLOW_ALLOWED_ROOTS", str(tmp_path))
    RegisteredResponse(
        service="transfer",
        path=f"/v0.10/operation/endpoint/{COMPUTE}/mkdir",
        method="POST",
        json={"code": "DirectoryCreated"},
    ).add()
    started = {}

    def run_flow(request):
        started["body"] = json.loads(request.body)
        return 201, {}, json.dumps({"run_id": RUN_ID, "status": "ACTIVE"})

    responses.add_callback(responses.POST, f"{FLOWS}/flows/{FLOW_ID}/run", callback=run_flow)

    def get_run(request):
        (folder,) = config.acquisition_root.glob("ptychoflow-sample-*")
        summary = reconstruct_view(
            str(folder / "view000.cxi"),
            str(config.acquisition_root / "recon" / folder.name),
            recon={"iterations": 5, "backend": "numpy"},
        )
        output = {"ReconstructResult": {"details": {"results": [{"output": worker(summary)}]}}}
        body = {"run_id": RUN_ID, "status": "SUCCEEDED", "details": {"output": output}}
        return 200, {}, json.dumps(body)

    responses.add_callback(responses.GET, f"{FLOWS}/runs/{RUN_ID}", callback=get_run)
    entries = []
    for state, start, end in (
        ("TransferIn", "00:01", "00:04"),
        ("Reconstruct", "00:04", "00:40"),
        ("TransferOut", "00:40", "00:43"),
    ):
        for code, time in (("ActionStarted", start), ("ActionCompleted", end)):
            entries.append(
                {
                    "code": code,
                    "time": f"2026-12-04T18:{time}+00:00",
                    "details": {"state_name": state},
                }
            )
    RegisteredResponse(
        service="flows",
        path=f"/runs/{RUN_ID}/log",
        json={"entries": entries, "has_next_page": False},
    ).add()
    RegisteredResponse(service="transfer", path="/v0.10/submission_id", json={"value": "s"}).add()
    RegisteredResponse(
        service="transfer",
        path="/v0.10/delete",
        method="POST",
        json={"DATA_TYPE": "delete_result", "task_id": "del-9", "code": "Accepted"},
    ).add()
    RegisteredResponse(
        service="transfer",
        path="/v0.10/task/del-9",
        json={"task_id": "del-9", "status": "SUCCEEDED"},
    ).add()
    return started


def run_sample(config, backend):
    sample = SampleRun(
        config,
        backend,
        remove_compute_copies=lambda d: backend.remove_compute_copies(d, wait_s=5),
        require_gpu=True,
        sleep=lambda s: None,
    )
    return {line.name: line for line in sample.run()}


def test_a_sample_run_on_globus_passes_and_cleans_both_sides(
    config, tmp_path, monkeypatch, mocked_responses
):
    started = register_service(config, tmp_path, monkeypatch)
    lines = run_sample(config, make_backend(config))
    assert all(line.ok for line in lines.values()), [x.format() for x in lines.values()]
    times = lines["per-stage times"].detail
    assert times == "transfer_in 3.0 s, compute 36.0 s, transfer_out 3.0 s"
    worker = lines["worker identity, GPU and backend"].detail
    assert "uid 31337" in worker and "CUDA_VISIBLE_DEVICES=1" in worker and "CuPy 13.3.0" in worker
    assert started["body"]["label"].startswith("ptychoflow-sample-")
    # The compute-side copies go in one Transfer delete task; the acquisition side is
    # cleaned locally and never through Transfer.
    (delete,) = [json.loads(r.body) for r in sent_requests() if r.path_url == "/v0.10/delete"]
    assert delete["endpoint"] == COMPUTE
    paths = [item["path"] for item in delete["DATA"]]
    assert [p.rsplit("/", 1)[0] for p in paths] == ["/p/input", "/p/recon"]
    assert delete["recursive"] is True
    assert list(config.acquisition_root.rglob("*view000*")) == []


def test_a_sample_that_fell_back_to_numpy_fails_and_says_so(
    config, tmp_path, monkeypatch, mocked_responses
):
    def numpy_worker(summary):
        return {**summary, "worker": {"uid": 1, "cupy_error": "CUDARuntimeError: no device"}}

    register_service(config, tmp_path, monkeypatch, worker=numpy_worker)
    lines = run_sample(config, make_backend(config))
    line = lines["worker identity, GPU and backend"]
    assert not line.ok
    assert "fell back to numpy" in line.detail and "no device" in line.detail
    assert lines["sample result came back"].ok
