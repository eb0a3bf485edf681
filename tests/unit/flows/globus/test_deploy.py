"""Deployment against mocked Globus Flows and Compute, asserting on the requests sent."""

from __future__ import annotations

import copy
import json
import os
import stat

import globus_sdk
import pytest
from globus_sdk.testing import RegisteredResponse, load_response

from flows.errors import ConfigError, FlowDefinitionError, TransientBackendError
from flows.globus import auth
from flows.globus.deploy import (
    Change,
    deploy,
    flow_content_hash,
    function_source_hash,
    load_json_file,
)
from flows.globus.errors import GlobusServiceError
from flows.globus.state import DeploymentState, load_state, save_state, state_path
from tests.unit.flows.globus.sent import last_json_body, sent_requests

ENDPOINT = "3f2a9d3c-86c4-4b0d-9d52-2a0c71f1b2aa"

DEFINITION = {
    "Comment": "stand-in for flows/definition.json",
    "StartAt": "Reconstruct",
    "States": {
        "Reconstruct": {
            "Type": "Action",
            "ActionUrl": "https://compute.actions.globus.org/v3",
            "Parameters": {
                "endpoint_id.$": "$.input.compute_endpoint",
                "tasks": [{"function_id.$": "$.input.function_id", "kwargs.$": "$.input.recon"}],
            },
            "ResultPath": "$.Reconstruct",
            "WaitTime": 3600,
            "End": True,
        }
    },
}
INPUT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"input": {"type": "object", "title": "Scan and view"}},
    "required": ["input"],
}


def reconstruct_stand_in(input_path: str, output_dir: str, options: dict) -> dict:
    """Stand-in for functions.reconstruct.reconstruct_view (registered by source)."""
    import pathlib

    return {"outputs": [str(pathlib.Path(output_dir) / pathlib.Path(input_path).name)]}


def reconstruct_stand_in_v2(input_path: str, output_dir: str, options: dict) -> dict:
    """The same function after an edit: its source differs."""
    return {"outputs": [], "edited": True}


@pytest.fixture
def clients(mocked_responses):
    flows = auth.flows_client(authorizer=globus_sdk.NullAuthorizer())
    compute = auth.compute_client(authorizer=globus_sdk.NullAuthorizer(), do_version_check=False)
    return flows, compute


def register_validate_ok() -> None:
    RegisteredResponse(
        service="flows",
        path="/flows/validate",
        method="POST",
        json={"scopes": {"User": ["urn:globus:auth:scope:transfer.api.globus.org:all"]}},
    ).add()


def request_paths() -> list[tuple[str, str]]:
    return [(request.method, request.path_url.split("?")[0]) for request in sent_requests()]


MONITOR = "urn:globus:groups:id:9b1c1f8e-7a9f-4ce2-9d6c-1a2b3c4d5e6f"


def deployed_flow_hash() -> str:
    """The content hash ``run_deploy`` with its defaults saves."""
    settings = {"keywords": ["ptychography", "ptychoflow"], "run_monitors": [MONITOR]}
    return flow_content_hash(DEFINITION, INPUT_SCHEMA, "ptychoflow test flow", settings)


def run_deploy(clients, state, tmp_path, **overrides):
    flows, compute = clients
    arguments = {
        "definition": DEFINITION,
        "input_schema": INPUT_SCHEMA,
        "state": state,
        "function": reconstruct_stand_in,
        "state_dir": tmp_path / "state",
        "title": "ptychoflow test flow",
        "run_monitors": ["urn:globus:groups:id:9b1c1f8e-7a9f-4ce2-9d6c-1a2b3c4d5e6f"],
        "compute_endpoint": ENDPOINT,
    }
    arguments.update(overrides)
    return deploy(flows, compute, **arguments)


def test_first_deploy_validates_creates_registers_and_saves(clients, tmp_path):
    register_validate_ok()
    created = load_response(globus_sdk.FlowsClient.create_flow)
    registered = load_response(globus_sdk.ComputeClientV3.register_function)
    flow_id = created.json["id"]

    result = run_deploy(clients, DeploymentState(), tmp_path)

    assert request_paths() == [
        ("POST", "/flows/validate"),
        ("POST", "/flows"),
        ("POST", "/v3/functions"),
    ]
    validate_request, create_request, register_request = sent_requests()
    assert json.loads(validate_request.body) == {
        "definition": DEFINITION,
        "input_schema": INPUT_SCHEMA,
    }
    create_body = json.loads(create_request.body)
    assert create_body["definition"] == DEFINITION
    assert create_body["input_schema"] == INPUT_SCHEMA
    assert create_body["title"] == "ptychoflow test flow"
    assert create_body["run_monitors"] == [
        "urn:globus:groups:id:9b1c1f8e-7a9f-4ce2-9d6c-1a2b3c4d5e6f"
    ]
    assert "subscription_id" not in create_body
    register_body = json.loads(register_request.body)
    assert register_body["function_name"] == "reconstruct_stand_in"
    assert register_body["function_code"]
    assert register_body["description"].startswith("Stand-in for")
    assert register_body["meta"]["python_version"]

    assert (result.flow, result.function) == (Change.CREATED, Change.CREATED)
    assert result.state.flow_id == flow_id
    assert result.state.function_id == registered.metadata["function_id"]
    assert result.state.compute_endpoint == ENDPOINT
    saved = load_state(tmp_path / "state")
    assert saved == result.state
    assert saved.flow_hash == deployed_flow_hash()
    assert saved.function_hash == function_source_hash(reconstruct_stand_in)
    assert stat.S_IMODE(os.stat(state_path(tmp_path / "state")).st_mode) == 0o600


def test_second_deploy_with_the_same_content_sends_nothing(clients, tmp_path):
    register_validate_ok()
    load_response(globus_sdk.FlowsClient.create_flow)
    load_response(globus_sdk.ComputeClientV3.register_function)
    first = run_deploy(clients, DeploymentState(), tmp_path)
    sent_before = len(sent_requests())

    second = run_deploy(clients, load_state(tmp_path / "state"), tmp_path)

    assert len(sent_requests()) == sent_before
    assert (second.flow, second.function) == (Change.UNCHANGED, Change.UNCHANGED)
    assert not second.changed
    assert second.state == first.state


def test_changed_definition_updates_the_same_flow(clients, tmp_path):
    updated = load_response(globus_sdk.FlowsClient.update_flow)
    flow_id = updated.metadata["flow_id"]
    register_validate_ok()
    state = DeploymentState(
        flow_id=flow_id,
        flow_hash=deployed_flow_hash(),
        function_id="f-1",
        function_hash=function_source_hash(reconstruct_stand_in),
    )
    changed = copy.deepcopy(DEFINITION)
    changed["States"]["Reconstruct"]["WaitTime"] = 7200

    result = run_deploy(clients, state, tmp_path, definition=changed)

    assert request_paths() == [("POST", "/flows/validate"), ("PUT", f"/flows/{flow_id}")]
    body = last_json_body()
    assert body["definition"] == changed
    assert body["input_schema"] == INPUT_SCHEMA
    assert body["title"] == "ptychoflow test flow"
    assert (result.flow, result.function) == (Change.UPDATED, Change.UNCHANGED)
    assert result.state.flow_id == flow_id
    assert result.state.function_id == "f-1"


def test_flow_deleted_on_the_service_is_created_anew_and_said_so(clients, tmp_path):
    gone = "0b7d1c52-4a7e-4e0e-8f1e-2f3c4d5e6f70"
    register_validate_ok()
    RegisteredResponse(
        service="flows",
        path=f"/flows/{gone}",
        method="PUT",
        status=404,
        json={"error": {"code": "NOT_FOUND", "detail": f"No flow with id {gone}"}},
    ).add()
    created = load_response(globus_sdk.FlowsClient.create_flow)
    state = DeploymentState(
        flow_id=gone,
        flow_hash="sha256:old",
        function_id="f-1",
        function_hash=function_source_hash(reconstruct_stand_in),
    )

    result = run_deploy(clients, state, tmp_path)

    assert request_paths() == [
        ("POST", "/flows/validate"),
        ("PUT", f"/flows/{gone}"),
        ("POST", "/flows"),
    ]
    assert result.flow is Change.RECREATED
    assert result.state.flow_id == created.json["id"]
    assert any(gone in message and "no longer exists" in message for message in result.messages)


def test_invalid_definition_reports_the_service_message_and_changes_nothing(clients, tmp_path):
    invalid = load_response(globus_sdk.FlowsClient.validate_flow, case="definition_error")
    definition = invalid.metadata["invalid"]

    with pytest.raises(FlowDefinitionError) as caught:
        run_deploy(clients, DeploymentState(), tmp_path, definition=definition)

    assert "must be defined as either terminal" in str(caught.value)
    assert "Step1" in str(caught.value)
    assert request_paths() == [("POST", "/flows/validate")]
    assert not state_path(tmp_path / "state").exists()


def test_changed_function_source_is_registered_again(clients, tmp_path):
    load_response(globus_sdk.ComputeClientV3.register_function)
    flow_hash = deployed_flow_hash()
    state = DeploymentState(
        flow_id="flow-1",
        flow_hash=flow_hash,
        function_id="old-function",
        function_hash=function_source_hash(reconstruct_stand_in),
    )

    result = run_deploy(clients, state, tmp_path, function=reconstruct_stand_in_v2)

    assert request_paths() == [("POST", "/v3/functions")]
    assert last_json_body()["function_name"] == "reconstruct_stand_in_v2"
    assert (result.flow, result.function) == (Change.UNCHANGED, Change.UPDATED)
    assert result.state.function_id != "old-function"
    assert result.state.flow_id == "flow-1"


def test_flow_id_is_saved_even_when_function_registration_fails(clients, tmp_path):
    """Otherwise the next deploy would create a second flow (a free subscription holds one)."""
    register_validate_ok()
    created = load_response(globus_sdk.FlowsClient.create_flow)
    RegisteredResponse(
        service="compute",
        path="/v3/functions",
        method="POST",
        status=400,
        json={"code": "BAD_REQUEST", "error": "bad_request", "reason": "function too large"},
    ).add()

    with pytest.raises(GlobusServiceError, match="registering reconstruct_stand_in"):
        run_deploy(clients, DeploymentState(), tmp_path)

    saved = load_state(tmp_path / "state")
    assert saved.flow_id == created.json["id"]
    assert saved.function_id is None


def test_service_outage_is_transient(clients, tmp_path, mocked_responses):
    register_validate_ok()
    RegisteredResponse(
        service="flows", path="/flows", method="POST", status=503, json={"error": "down"}
    ).add()

    with pytest.raises(TransientBackendError, match="creating the flow"):
        run_deploy(clients, DeploymentState(), tmp_path)
    assert mocked_responses, "the SDK should have retried the 503 before giving up"


def test_state_round_trip_and_bad_state_file(tmp_path):
    state = DeploymentState(flow_id="a", flow_hash="sha256:b", compute_endpoint=ENDPOINT)
    save_state(tmp_path / "state", state)
    assert load_state(tmp_path / "state") == state
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    state_path(tmp_path / "state").write_text("{not json")
    with pytest.raises(ConfigError, match=r"deployment\.json: deployment state is not valid JSON"):
        load_state(tmp_path / "state")
    assert load_state(tmp_path / "nowhere") == DeploymentState()


def test_definition_file_errors_name_the_file(tmp_path):
    path = tmp_path / "definition.json"
    with pytest.raises(FlowDefinitionError, match=r"definition\.json: flow definition file not"):
        load_json_file(path, "flow definition")
    path.write_text("[1, 2]")
    with pytest.raises(FlowDefinitionError, match="must be a JSON object"):
        load_json_file(path, "flow definition")


def test_the_packaged_definition_and_function_are_what_deploy_sends(clients, tmp_path):
    """One definition file for both backends: the local backend's end-to-end test runs
    flows/definition.json, and deploy sends that same file to Globus Flows."""
    from flows.flow_input import load_definition, load_input_schema
    from functions.reconstruct import reconstruct_view

    register_validate_ok()
    load_response(globus_sdk.FlowsClient.create_flow)
    load_response(globus_sdk.ComputeClientV3.register_function)
    run_deploy(
        clients,
        DeploymentState(),
        tmp_path,
        definition=load_definition(),
        input_schema=load_input_schema(),
        function=reconstruct_view,
    )
    _, create_request, register_request = sent_requests()
    body = json.loads(create_request.body)
    assert body["definition"] == load_definition()
    assert body["input_schema"] == load_input_schema()
    assert json.loads(register_request.body)["function_name"] == "reconstruct_view"
