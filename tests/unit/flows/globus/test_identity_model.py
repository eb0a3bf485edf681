"""The identity model end to end, offline: who deploys, who starts, consents, subscriptions,
attempts, INACTIVE runs and resume, asserting on the request bodies actually sent."""

from __future__ import annotations

import argparse
import json
import urllib.parse

import globus_sdk
import pytest
import responses
from globus_sdk.scopes import ScopeParser
from globus_sdk.testing import RegisteredResponse, load_response

from flows.backend import RunStatus, StartedRun, Trigger, ViewRequest
from flows.config import Config, GlobusSettings, config_from_dict
from flows.errors import ConfigError
from flows.globus import auth
from flows.globus.backend import GlobusBackend
from flows.globus.errors import FlowGoneError
from flows.globus.setup import deploy_from_config, flow_starters
from flows.globus.state import load_state
from flows.ledger import Ledger
from tests.unit.flows.globus.sent import last_json_body, sent_requests

WATCHER = "5d9c3e2e-6b3c-4a6e-9a57-0f9b1f4c8a11"
PERSON = "urn:globus:auth:identity:58cf49f4-06ea-4b76-934c-d5c9f6c3ea9d"
GROUP = "urn:globus:groups:id:9b1c1f8e-7a9f-4ce2-9d6c-1a2b3c4d5e6f"
EAGLE = "05d2c76a-e867-4f67-aa57-76edeb0beda0"
ENDPOINT = "3f2a9d3c-86c4-4b0d-9d52-2a0c71f1b2aa"
SUBSCRIPTION = "5b5b5b5b-0000-4c61-8d0a-6a1e5b7c9d20"
FLOW_ID = "24bc4997-b483-4c25-a19c-64b0afc00743"
RUN_ID = "7c1d9a3e-5b2f-4e8a-9c0d-1e2f3a4b5c6d"


@pytest.fixture
def config(tmp_path):
    return Config(
        backend="globus",
        state_dir=tmp_path / "state",
        ledger=tmp_path / "ledger.sqlite",
        globus=GlobusSettings(
            acquisition_collection="a1a1a1a1-0000-4c61-8d0a-6a1e5b7c9d20",
            compute_collection=EAGLE,
            compute_endpoint=ENDPOINT,
            compute_root_on_endpoint="/eagle/p",
            watcher_client_id=WATCHER,
            flow_starters=[GROUP],
            run_monitors=[GROUP],
            run_managers=[PERSON],
            data_access_collections=[EAGLE],
            subscription_id=SUBSCRIPTION,
        ),
    )


def token_response(resource_server: str, scope: str) -> dict:
    return {
        "access_token": f"TOKEN-{resource_server}",
        "scope": scope,
        "expires_in": 172800,
        "token_type": "Bearer",
        "resource_server": resource_server,
    }


def resource_server_of(scope: str) -> str:
    if scope in ("openid", "profile", "email"):
        return "auth.globus.org"
    if "transfer.api.globus.org" in scope:
        return "transfer.api.globus.org"
    if "eec9b274-0c81-4334-bdc2-54e90e689b9a" in scope:
        return "flows.globus.org"
    if "facd7ccc-c5f4-42aa-916b-a0e270e2c2a9" in scope:
        return "funcx_service"
    return scope.split("/scopes/")[1].split("/")[0]  # a flow's own scope: its flow id


def answer_token_request(request):
    """Auth's client-credentials grant: one token per resource server the scopes name."""
    requested = urllib.parse.parse_qs(request.body)["scope"][0]
    top_level = [scope.scope_string for scope in ScopeParser.parse(requested)]
    servers = list(dict.fromkeys(resource_server_of(s) for s in top_level))
    tokens = [token_response(server, requested) for server in servers]
    return 200, {}, json.dumps({**tokens[0], "other_tokens": tokens[1:]})


def register_tokens() -> None:
    responses.add_callback(
        responses.POST,
        "https://auth.globus.org/v2/oauth2/token",
        callback=answer_token_request,
        content_type="application/json",
    )


def test_flow_starters_are_the_watcher_client_then_the_configured_ones(config):
    assert flow_starters(config) == [f"urn:globus:auth:identity:{WATCHER}", GROUP]


def test_config_rejects_an_identity_that_is_not_a_urn_and_a_collection_that_is_not_an_id():
    with pytest.raises(ConfigError, match=r"flow_starters.*must be an identity or group URN"):
        config_from_dict({"globus": {"flow_starters": ["alice@anl.gov"]}})
    with pytest.raises(ConfigError, match=r"data_access_collections.*'eagle'"):
        config_from_dict({"globus": {"data_access_collections": ["eagle"]}})


def test_the_compute_endpoint_credentials_are_the_watcher_client(config):
    """One client owns the endpoint (GLOBUS_COMPUTE_CLIENT_ID/SECRET) and starts runs."""
    app = auth.make_app(
        config,
        environ={"GLOBUS_COMPUTE_CLIENT_ID": WATCHER, "GLOBUS_COMPUTE_CLIENT_SECRET": "s"},
    )
    assert isinstance(app, globus_sdk.ClientApp)
    assert app.client_id == WATCHER


def test_deploy_as_the_client_sends_starters_subscription_and_asks_consent_after_creating(
    config, mocked_responses, monkeypatch
):
    """deploy_from_config end to end with a ClientApp: what Flows, Compute and Auth receive."""
    monkeypatch.setenv("PTYCHOFLOW_CLIENT_ID", WATCHER)
    monkeypatch.setenv("PTYCHOFLOW_CLIENT_SECRET", "s3cret")
    created = load_response(globus_sdk.FlowsClient.create_flow)
    flow_id = created.json["id"]
    register_tokens()
    RegisteredResponse(
        service="compute",
        path="/v2/version",
        json={"api": "2", "min_sdk_version": "0.0.1", "min_ep_version": "0.0.1"},
    ).add()
    RegisteredResponse(
        service="flows", path="/flows/validate", method="POST", json={"scopes": {}}
    ).add()
    load_response(globus_sdk.ComputeClientV3.register_function)

    result = deploy_from_config(config, identity_wait_s=0)

    assert result.state.flow_id == flow_id
    assert load_state(config.state_dir).identity_function_id
    create = next(r for r in sent_requests() if r.method == "POST" and r.path_url == "/flows")
    body = json.loads(create.body)
    assert body["flow_starters"] == [f"urn:globus:auth:identity:{WATCHER}", GROUP]
    assert body["subscription_id"] == SUBSCRIPTION
    assert body["run_monitors"] == [GROUP]
    assert body["run_managers"] == [PERSON]
    registrations = [json.loads(r.body) for r in sent_requests() if r.path_url == "/v3/functions"]
    assert [r["function_name"] for r in registrations] == ["reconstruct_view", "endpoint_identity"]
    assert all(r["public"] is True for r in registrations), "the client may run them"

    sent = sent_requests()
    scopes_asked = [
        (index, urllib.parse.parse_qs(r.body)["scope"][0])
        for index, r in enumerate(sent)
        if r.path_url == "/v2/oauth2/token"
    ]
    created_at = sent.index(create)
    # No flow scope is asked for before the flow exists (the old one might be gone) ...
    assert not [s for i, s in scopes_asked if i < created_at and flow_id in s]
    # ... after it, the new flow's own scope, with data_access under Transfer under it,
    (flow_scope,) = [s for i, s in scopes_asked if i > created_at and f"{flow_id}/flow_" in s]
    assert f"transfer.api.globus.org:all[*https://auth.globus.org/scopes/{EAGLE}/data_access]" in (
        flow_scope
    )
    # and the Transfer token itself carries the data_access dependency.
    (transfer_scope,) = [
        s for _, s in scopes_asked if s.startswith("urn:globus:auth:scope:transfer")
    ]
    assert f"{EAGLE}/data_access" in transfer_scope


def make_backend(config) -> GlobusBackend:
    null = globus_sdk.NullAuthorizer()
    return GlobusBackend(
        config,
        flow_id=FLOW_ID,
        input_builder=lambda request: {"view": request.view_file},
        flows_client=auth.flows_client(authorizer=null),
        run_client=auth.specific_flow_client(FLOW_ID, authorizer=null),
        transfer_client=auth.transfer_client(authorizer=null),
    )


REQUEST = ViewRequest(
    scan_id=100, view_file="view003.cxi", scan_folder="scan100", recon={}, attempt=2
)


def test_a_404_on_run_flow_says_the_flow_is_gone_and_to_deploy(config, mocked_responses):
    RegisteredResponse(
        service="flows",
        path=f"/flows/{FLOW_ID}/run",
        method="POST",
        status=404,
        json={"error": {"code": "NOT_FOUND", "detail": "flow not found"}},
    ).add()
    with pytest.raises(FlowGoneError) as caught:
        make_backend(config).start_view(REQUEST)
    message = str(caught.value)
    assert "the flow is gone" in message
    assert "30 days without a subscription" in message
    assert "ptychoflow deploy" in message


def test_runs_are_tagged_with_their_attempt_and_find_run_ignores_other_attempts(
    config, mocked_responses
):
    RegisteredResponse(
        service="flows", path=f"/flows/{FLOW_ID}/run", method="POST", json={"run_id": RUN_ID}
    ).add()
    make_backend(config).start_view(REQUEST)
    assert last_json_body()["tags"][-1] == "attempt:2"

    earlier = {
        "run_id": "11111111-5b2f-4e8a-9c0d-1e2f3a4b5c6d",
        "label": "scan100-view003",
        "tags": [
            "ptychography",
            "scan:100",
            "folder:scan100",
            "view:view003",
            "trigger:manual",
            "attempt:1",
        ],
        "start_time": "2025-03-01T10:00:00+00:00",
    }
    RegisteredResponse(
        service="flows", path="/runs", json={"runs": [earlier], "has_next_page": False}
    ).add()
    assert make_backend(config).find_run(REQUEST) is None, "attempt 1's run is not attempt 2's"
    first = ViewRequest(100, "view003.cxi", "scan100", {}, Trigger.MANUAL, attempt=1)
    assert make_backend(config).find_run(first) == StartedRun(
        earlier["run_id"], f"https://app.globus.org/runs/{earlier['run_id']}"
    )


INACTIVE_RUN = {
    "run_id": RUN_ID,
    "status": "INACTIVE",
    "details": {
        "code": "ConsentRequired",
        "description": "The run needs consent for data_access on a mapped collection",
        "required_scope": f"https://auth.globus.org/scopes/{EAGLE}/data_access",
    },
}


def test_an_inactive_run_shows_its_reason_and_fix_and_resume_continues_it(
    config, mocked_responses, monkeypatch, capsys
):
    ledger = Ledger(config.ledger)
    ledger.claim(REQUEST, "globus")
    ledger.mark_submitting("scan100", "view003.cxi")
    ledger.mark_started("scan100", "view003.cxi", StartedRun(RUN_ID))
    backend = make_backend(config)
    RegisteredResponse(service="flows", path=f"/runs/{RUN_ID}", json=INACTIVE_RUN).add()
    RegisteredResponse(
        service="flows", path=f"/runs/{RUN_ID}/log", json={"entries": [], "has_next_page": False}
    ).add()

    row = ledger.update_progress("scan100", "view003.cxi", backend.poll(RUN_ID))
    assert row.status is RunStatus.INACTIVE
    assert "ConsentRequired" in (row.error or "")
    assert "ptychoflow login" in (row.error or "") and "ptychoflow resume" in (row.error or "")
    assert not row.status.terminal
    ledger.close()

    from flows.commands import format_status, resume_command

    status_text = format_status(Ledger(config.ledger).runs())
    assert "inactive" in status_text and "ptychoflow resume" in status_text

    RegisteredResponse(
        service="flows",
        path=f"/runs/{RUN_ID}/resume",
        method="POST",
        json={**INACTIVE_RUN, "status": "ACTIVE", "details": {}},
    ).add()
    monkeypatch.setattr("flows.globus.setup.open_globus_backend", lambda cfg: backend)
    monkeypatch.setattr("flows.commands._load", lambda args: config)

    code = resume_command(argparse.Namespace(scan=None, config=None))

    assert code == 0
    resumed = [r for r in sent_requests() if r.path_url == f"/runs/{RUN_ID}/resume"]
    assert len(resumed) == 1 and resumed[0].method == "POST"
    assert "scan100-view003: active" in capsys.readouterr().out
    row = Ledger(config.ledger).get("scan100", "view003.cxi")
    assert row is not None and row.status is RunStatus.ACTIVE and row.error is None


def test_login_asks_for_data_access_under_transfer_and_under_the_deployed_flow(
    config, mocked_responses, monkeypatch
):
    from flows.globus.setup import login_from_config
    from flows.globus.state import DeploymentState, save_state

    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_ID", WATCHER)
    monkeypatch.setenv("GLOBUS_COMPUTE_CLIENT_SECRET", "s3cret")
    save_state(config.state_dir, DeploymentState(flow_id=FLOW_ID))
    register_tokens()
    RegisteredResponse(
        service="compute",
        path="/v2/version",
        json={"api": "2", "min_sdk_version": "0.0.1", "min_ep_version": "0.0.1"},
    ).add()

    login_from_config(config)

    scopes = [
        urllib.parse.parse_qs(r.body)["scope"][0]
        for r in sent_requests()
        if r.path_url == "/v2/oauth2/token"
    ]
    assert "grant_type=client_credentials" in sent_requests()[0].body
    data_access = f"[*https://auth.globus.org/scopes/{EAGLE}/data_access]"
    (flow_scope,) = [s for s in scopes if f"{FLOW_ID}/flow_" in s]
    assert f"transfer.api.globus.org:all{data_access}" in flow_scope
    (transfer_scope,) = [s for s in scopes if s.startswith("urn:globus:auth:scope:transfer")]
    assert data_access in transfer_scope


def test_a_person_cannot_start_runs_and_is_told_how_to_reprocess(tmp_path, monkeypatch):
    """A non-privileged Compute endpoint runs only its owner's tasks (Globus Compute
    docs, "Endpoints": a single-user endpoint accepts tasks from its owner identity): a
    run started as a person would end ReconstructFailed. run-flow refuses up front."""
    from flows.errors import ConfigError
    from flows.launcher import make_backend as make_configured_backend

    for variable in (
        "PTYCHOFLOW_CLIENT_ID",
        "PTYCHOFLOW_CLIENT_SECRET",
        "GLOBUS_COMPUTE_CLIENT_ID",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    monkeypatch.delenv("GLOBUS_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_CLIENT_SECRET", raising=False)
    monkeypatch.setenv("PTYCHOFLOW_NATIVE_CLIENT_ID", "0f3c9b8e-2f4d-4c61-8d0a-6a1e5b7c9d20")
    config = Config(backend="globus", state_dir=tmp_path / "state")
    with pytest.raises(ConfigError, match="watcher's confidential client") as caught:
        make_configured_backend(config)
    assert "credentials.env" in str(caught.value) and "run-flow" in str(caught.value)
