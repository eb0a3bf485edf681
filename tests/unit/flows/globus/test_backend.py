"""The Globus backend against mocked Transfer and Flows, asserting on the requests sent."""

from __future__ import annotations

import json
import threading

import globus_sdk
import pytest
from globus_sdk.testing import RegisteredResponse, load_response

from flows.backend import RunStatus, StartedRun, Trigger, ViewRequest
from flows.config import Config, GlobusSettings
from flows.errors import ConfigError, TransientBackendError
from flows.globus import auth
from flows.globus.backend import GlobusBackend, progress_from_run, stage_times
from flows.globus.errors import GlobusAuthorizationError, GlobusServiceError
from flows.globus.state import DeploymentState, save_state
from tests.unit.flows.globus.sent import (
    last_json_body,
    register_run_flow_unavailable,
    sent_requests,
)

COMPUTE_COLLECTION = "c0ffee00-1234-4c61-8d0a-6a1e5b7c9d20"
MONITOR = "urn:globus:groups:id:9b1c1f8e-7a9f-4ce2-9d6c-1a2b3c4d5e6f"
MANAGER = "urn:globus:auth:identity:58cf49f4-06ea-4b76-934c-d5c9f6c3ea9d"
FLOW_ID = "24bc4997-b483-4c25-a19c-64b0afc00743"
RUN_ID = "7c1d9a3e-5b2f-4e8a-9c0d-1e2f3a4b5c6d"

REQUEST = ViewRequest(
    scan_id=100,
    view_file="view003.cxi",
    scan_folder="scan100",
    recon={"iterations": 10},
    trigger=Trigger.AUTO,
)


def build_input(request: ViewRequest) -> dict:
    """Stand-in for flows.flow_input.build_flow_input."""
    return {"input": {"scan_id": request.scan_id, "view_file": request.view_file}}


def make_backend(config: Config, flow_id: str = FLOW_ID) -> GlobusBackend:
    authorizer = globus_sdk.NullAuthorizer()
    return GlobusBackend(
        config,
        flow_id=flow_id,
        input_builder=build_input,
        flows_client=auth.flows_client(authorizer=authorizer),
        run_client=auth.specific_flow_client(flow_id, authorizer=authorizer),
        transfer_client=auth.transfer_client(authorizer=authorizer),
    )


@pytest.fixture
def config(tmp_path):
    return Config(
        backend="globus",
        state_dir=tmp_path / "state",
        globus=GlobusSettings(
            compute_collection=COMPUTE_COLLECTION,
            compute_base="/eagle/ptycho",
            run_monitors=[MONITOR],
            run_managers=[MANAGER],
        ),
    )


@pytest.fixture
def backend(config, mocked_responses):
    return make_backend(config)


def mkdir_response(status: int = 200, code: str = "DirectoryCreated") -> RegisteredResponse:
    return RegisteredResponse(
        service="transfer",
        path=f"/v0.10/operation/endpoint/{COMPUTE_COLLECTION}/mkdir",
        method="POST",
        status=status,
        json={"DATA_TYPE": "mkdir_result", "code": code, "message": code, "request_id": "x"},
    )


# -- prepare_scan ---------------------------------------------------------------------------


def test_prepare_scan_makes_input_and_recon_folders(backend):
    mkdir_response().add()

    backend.prepare_scan(100)

    requests = sent_requests()
    assert {request.path_url for request in requests} == {
        f"/v0.10/operation/endpoint/{COMPUTE_COLLECTION}/mkdir"
    }
    paths = [json.loads(request.body)["path"] for request in requests]
    assert paths == [
        "/eagle/ptycho/input",
        "/eagle/ptycho/input/100",
        "/eagle/ptycho/recon",
        "/eagle/ptycho/recon/100",
    ]
    # Parents are made once per backend; the next scan only needs its own pair.
    backend.prepare_scan(101)
    later = [json.loads(request.body)["path"] for request in sent_requests()[4:]]
    assert later == ["/eagle/ptycho/input/101", "/eagle/ptycho/recon/101"]


def test_prepare_scan_accepts_existing_folders_without_retrying(backend, mocked_responses):
    # Transfer answers "exists" with HTTP 502; the SDK would retry a 502 five times.
    mkdir_response(502, "ExternalError.MkdirFailed.Exists").add()

    backend.prepare_scan(100)

    assert len(sent_requests()) == 4
    assert mocked_responses == [], "an 'exists' answer must not be retried"


def test_prepare_scan_permission_denied_is_a_clear_error(backend):
    mkdir_response(403, "PermissionDenied").add()

    with pytest.raises(GlobusServiceError) as caught:
        backend.prepare_scan(100)
    message = str(caught.value)
    assert "/eagle/ptycho/input" in message
    assert COMPUTE_COLLECTION in message
    assert "PermissionDenied" in message


def test_prepare_scan_needs_a_compute_collection(config, mocked_responses):
    config.globus.compute_collection = ""
    with pytest.raises(ConfigError, match="compute_collection"):
        make_backend(config).prepare_scan(100)
    assert sent_requests() == []


# -- start_view -----------------------------------------------------------------------------


def test_start_view_sends_input_label_tags_monitors(backend):
    RegisteredResponse(
        service="flows",
        path=f"/flows/{FLOW_ID}/run",
        method="POST",
        json={"run_id": RUN_ID, "flow_id": FLOW_ID, "status": "ACTIVE"},
    ).add()

    started = backend.start_view(REQUEST)

    assert started == StartedRun(run_id=RUN_ID, web_url=f"https://app.globus.org/runs/{RUN_ID}")
    body = last_json_body()
    assert body["body"] == {"input": {"scan_id": 100, "view_file": "view003.cxi"}}
    assert body["label"] == "scan100-view003"
    assert body["tags"] == [
        "ptychography",
        "scan:100",
        "folder:scan100",
        "view:view003",
        "trigger:auto",
        "attempt:1",
    ]
    assert body["run_monitors"] == [MONITOR]
    assert body["run_managers"] == [MANAGER]


def test_start_view_missing_scope_says_to_log_in(config, mocked_responses):
    missing = load_response(globus_sdk.SpecificFlowClient.run_flow, case="missing_scope_error")
    backend = make_backend(config, flow_id=missing.metadata["flow_id"])

    with pytest.raises(GlobusAuthorizationError) as caught:
        backend.start_view(REQUEST)
    assert "ptychoflow login" in str(caught.value)
    assert "scan100-view003" in str(caught.value)


def test_start_view_service_unavailable_is_transient(backend, mocked_responses):
    register_run_flow_unavailable(FLOW_ID)

    with pytest.raises(TransientBackendError, match="retry later"):
        backend.start_view(REQUEST)
    # One POST and no SDK retry: a retried POST could start a second run; the launcher
    # decides (it looks for the run first).
    assert mocked_responses == []
    assert [r.method for r in sent_requests()] == ["POST"]


def test_network_error_is_transient(backend, mocked_responses):
    # Nothing registered: responses refuses the connection, as a dead network would.
    with pytest.raises(TransientBackendError, match="network error"):
        backend.start_view(REQUEST)


def test_from_app_without_a_deployment_says_deploy_first(config):
    app = auth.make_app(
        config, environ={"PTYCHOFLOW_NATIVE_CLIENT_ID": "0f3c9b8e-2f4d-4c61-8d0a-6a1e5b7c9d20"}
    )
    with pytest.raises(ConfigError, match="ptychoflow deploy"):
        GlobusBackend.from_app(config, app, input_builder=build_input)
    save_state(config.state_dir, DeploymentState(flow_id=FLOW_ID))
    backend = GlobusBackend.from_app(config, app, input_builder=build_input)
    assert backend.flow_id == FLOW_ID
    assert FLOW_ID in app.scope_requirements


def test_missing_tokens_say_to_log_in(config, mocked_responses):
    """A UserApp with an empty token file raises instead of prompting (the watcher has no tty)."""
    app = auth.make_app(
        config, environ={"PTYCHOFLOW_NATIVE_CLIENT_ID": "0f3c9b8e-2f4d-4c61-8d0a-6a1e5b7c9d20"}
    )
    backend = GlobusBackend.from_app(config, app, input_builder=build_input, flow_id=FLOW_ID)

    with pytest.raises(GlobusAuthorizationError, match="ptychoflow login"):
        backend.start_view(REQUEST)
    assert sent_requests() == []


# -- poll -----------------------------------------------------------------------------------


def log_event(time: str, code: str, state: str | None = None) -> dict:
    details = {"state_name": state, "state_type": "Action"} if state else {}
    return {"time": time, "code": code, "description": code, "details": details}


SUCCEEDED_EVENTS = [
    log_event("2025-03-01T10:00:00+00:00", "FlowStarted"),
    log_event("2025-03-01T10:00:01+00:00", "ActionStarted", "TransferIn"),
    log_event("2025-03-01T10:00:13.500000+00:00", "ActionCompleted", "TransferIn"),
    log_event("2025-03-01T10:00:14+00:00", "ActionStarted", "Reconstruct"),
    log_event("2025-03-01T10:01:59+00:00", "ActionCompleted", "Reconstruct"),
    log_event("2025-03-01T10:02:00+00:00", "ActionStarted", "TransferOut"),
    log_event("2025-03-01T10:02:04+00:00", "ActionCompleted", "TransferOut"),
    log_event("2025-03-01T10:02:05+00:00", "FlowSucceeded"),
]
SUMMARY = {"outputs": ["recon/100/view003.h5"], "iterations": 10, "final_cost": 1.5}


def register_run(run: dict, events: list[dict]) -> None:
    RegisteredResponse(service="flows", path=f"/runs/{RUN_ID}", method="GET", json=run).add()
    RegisteredResponse(
        service="flows",
        path=f"/runs/{RUN_ID}/log",
        method="GET",
        json={"limit": 100, "has_next_page": False, "entries": events},
    ).add()


def test_poll_succeeded_run_with_stage_seconds_and_output(backend):
    register_run(
        {
            "run_id": RUN_ID,
            "status": "SUCCEEDED",
            "details": {
                "code": "FlowSucceeded",
                "output": {
                    "input": {},
                    "Reconstruct": {
                        "status": "SUCCEEDED",
                        "details": {"results": [{"task_id": "t", "output": SUMMARY}]},
                    },
                },
            },
        },
        SUCCEEDED_EVENTS,
    )

    progress = backend.poll(RUN_ID)

    assert progress.status is RunStatus.SUCCEEDED
    assert progress.stage_seconds == {"transfer_in": 12.5, "compute": 105.0, "transfer_out": 4.0}
    assert progress.output == SUMMARY
    assert progress.error is None
    get_run, get_logs = sent_requests()
    assert get_run.path_url == f"/runs/{RUN_ID}"
    assert get_logs.path_url.startswith(f"/runs/{RUN_ID}/log?")
    assert "limit=100" in get_logs.path_url


def test_poll_failed_run_reports_the_caught_error(backend):
    cause = "InputError: scan100/view003.cxi: /entry_1/data_1/data is missing"
    register_run(
        {
            "run_id": RUN_ID,
            "status": "FAILED",
            "details": {
                "code": "FlowFailed",
                "description": "The Flow has failed",
                "output": {
                    "input": {"Error": "user input is not a failure record"},
                    "ReconstructFailure": {"Error": "ActionFailedException", "Cause": cause},
                },
            },
        },
        [
            *SUCCEEDED_EVENTS[:4],
            log_event("2025-03-01T10:00:20+00:00", "ActionFailed", "Reconstruct"),
        ],
    )

    progress = backend.poll(RUN_ID)

    assert progress.status is RunStatus.FAILED
    assert progress.error == f"run failed: ActionFailedException: {cause}"
    assert progress.stage_seconds == {"transfer_in": 12.5, "compute": 6.0}


def test_poll_active_run_names_the_running_stage(backend):
    register_run({"run_id": RUN_ID, "status": "ACTIVE", "details": {}}, SUCCEEDED_EVENTS[:4])

    progress = backend.poll(RUN_ID)

    assert progress.status is RunStatus.ACTIVE
    assert progress.stage == "compute"
    assert progress.stage_seconds == {"transfer_in": 12.5}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("ACTIVE", RunStatus.ACTIVE),
        ("INACTIVE", RunStatus.INACTIVE),
        ("SUCCEEDED", RunStatus.SUCCEEDED),
        ("FAILED", RunStatus.FAILED),
        ("ENDED", RunStatus.FAILED),
    ],
)
def test_status_mapping(status, expected):
    progress = progress_from_run(
        {"status": status, "details": {"code": "FlowCanceled", "description": "cancelled"}}
    )
    assert progress.status is expected
    if expected is RunStatus.FAILED:
        assert progress.error == f"run {status.lower()}: FlowCanceled: cancelled"


def test_stage_times_ignores_unknown_states_and_adds_repeats():
    events = [
        log_event("2025-03-01T10:00:00Z", "ActionStarted", "Notify"),
        log_event("2025-03-01T10:00:09Z", "ActionCompleted", "Notify"),
        log_event("2025-03-01T10:00:10Z", "ActionStarted", "TransferIn"),
        log_event("2025-03-01T10:00:12Z", "ActionCompleted", "TransferIn"),
        log_event("2025-03-01T10:00:20Z", "ActionStarted", "TransferIn"),
        log_event("2025-03-01T10:00:21Z", "ActionCompleted", "TransferIn"),
    ]
    assert stage_times(events) == ({"transfer_in": 3.0}, None)


def test_poll_of_an_unknown_run_is_a_clear_error(backend):
    RegisteredResponse(
        service="flows",
        path=f"/runs/{RUN_ID}",
        method="GET",
        status=404,
        json={"error": {"code": "NOT_FOUND", "detail": f"No run with id {RUN_ID}"}},
    ).add()
    with pytest.raises(GlobusServiceError, match=f"reading the status of run {RUN_ID}"):
        backend.poll(RUN_ID)


# -- find_run -------------------------------------------------------------------------------


def run_summary(run_id: str, label: str, tags: list[str], start: str) -> dict:
    return {"run_id": run_id, "label": label, "tags": tags, "start_time": start, "status": "ACTIVE"}


def test_find_run_adopts_the_newest_matching_run(backend):
    tags = REQUEST.tags
    runs = [
        run_summary("older", "scan100-view003", tags, "2025-03-01T10:00:00+00:00"),
        run_summary("newest", "scan100-view003", tags, "2025-03-01T11:00:00+00:00"),
        # Substring matches of the label, other views and other scans are not adopted.
        run_summary("other-view", "scan100-view0031", tags, "2025-03-01T12:00:00+00:00"),
        run_summary(
            "wrong-tags",
            "scan100-view003",
            ["ptychography", "scan:1000", "folder:scan1000", "view:view003"],
            "2025-03-01T12:00:00+00:00",
        ),
    ]
    RegisteredResponse(
        service="flows",
        path="/runs",
        method="GET",
        json={"runs": runs[:2], "has_next_page": True, "marker": "page-2", "limit": 2},
    ).add()
    RegisteredResponse(
        service="flows",
        path="/runs",
        method="GET",
        json={"runs": runs[2:], "has_next_page": False, "limit": 2},
    ).add()

    found = backend.find_run(REQUEST)

    assert found == StartedRun(run_id="newest", web_url="https://app.globus.org/runs/newest")
    first, second = sent_requests()
    assert f"filter_flow_id={FLOW_ID}" in first.path_url
    assert "filter_label=scan100-view003" in first.path_url
    assert "marker=page-2" in second.path_url


def test_find_run_returns_none_when_nothing_matches(backend):
    RegisteredResponse(
        service="flows",
        path="/runs",
        method="GET",
        json={"runs": [], "has_next_page": False, "limit": 20},
    ).add()
    assert backend.find_run(REQUEST) is None


def test_backend_is_usable_from_threads(backend):
    """Requests are serialised by the backend's lock; all answers arrive."""
    RegisteredResponse(
        service="flows",
        path=f"/flows/{FLOW_ID}/run",
        method="POST",
        json={"run_id": RUN_ID, "status": "ACTIVE"},
    ).add()
    results: list[StartedRun] = []
    threads = [
        threading.Thread(target=lambda: results.append(backend.start_view(REQUEST)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 8
    assert len(sent_requests()) == 8
