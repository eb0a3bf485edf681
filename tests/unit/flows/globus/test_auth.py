"""Globus authentication: which app, which credentials, where tokens go, what is sent."""

from __future__ import annotations

import json
import os
import stat

import globus_sdk
import pytest
from globus_sdk.testing import RegisteredResponse
from globus_sdk.token_storage import TokenStorageData

from flows.config import Config
from flows.errors import ConfigError
from flows.globus import auth
from tests.unit.flows.globus.sent import sent_requests

CLIENT_ID = "5d9c3e2e-6b3c-4a6e-9a57-0f9b1f4c8a11"
NATIVE_ID = "0f3c9b8e-2f4d-4c61-8d0a-6a1e5b7c9d20"
COLLECTION = "aa3b1d4e-0000-4c61-8d0a-6a1e5b7c9d20"


@pytest.fixture
def config(tmp_path):
    return Config(state_dir=tmp_path / "state")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_confidential_client_from_ptychoflow_variables(config):
    app = auth.make_app(
        config,
        environ={"PTYCHOFLOW_CLIENT_ID": CLIENT_ID, "PTYCHOFLOW_CLIENT_SECRET": "s3cret"},
    )
    assert isinstance(app, globus_sdk.ClientApp)
    assert str(app.client_id) == CLIENT_ID


def test_confidential_client_from_globus_variables(config):
    app = auth.make_app(
        config, environ={"GLOBUS_CLIENT_ID": CLIENT_ID, "GLOBUS_CLIENT_SECRET": "s3cret"}
    )
    assert isinstance(app, globus_sdk.ClientApp)


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({"PTYCHOFLOW_CLIENT_ID": CLIENT_ID}, "PTYCHOFLOW_CLIENT_SECRET"),
        ({"PTYCHOFLOW_CLIENT_SECRET": "s3cret"}, "PTYCHOFLOW_CLIENT_ID"),
        ({"GLOBUS_CLIENT_ID": CLIENT_ID}, "GLOBUS_CLIENT_SECRET"),
        # A half pair is an error even when a native client id is available.
        (
            {"GLOBUS_CLIENT_SECRET": "x", "PTYCHOFLOW_NATIVE_CLIENT_ID": NATIVE_ID},
            "GLOBUS_CLIENT_ID",
        ),
    ],
)
def test_partial_credentials_name_the_missing_variable(config, environ, missing):
    with pytest.raises(ConfigError, match=f"{missing} is missing"):
        auth.make_app(config, environ=environ)


def test_client_id_must_be_a_uuid(config):
    with pytest.raises(ConfigError, match="PTYCHOFLOW_CLIENT_ID = 'my-client' is not"):
        auth.make_app(
            config, environ={"PTYCHOFLOW_CLIENT_ID": "my-client", "PTYCHOFLOW_CLIENT_SECRET": "x"}
        )


def test_user_app_with_refresh_tokens(config):
    app = auth.make_app(config, environ={"PTYCHOFLOW_NATIVE_CLIENT_ID": NATIVE_ID})
    assert isinstance(app, globus_sdk.UserApp)
    assert str(app.client_id) == NATIVE_ID
    # Without refresh tokens a login would last two hours, not a beamtime.
    assert app.config.request_refresh_tokens is True
    # No terminal prompt from inside the watcher: missing tokens raise instead.
    assert app.config.token_validation_error_handler is None
    storage = app.token_storage.token_storage
    assert isinstance(storage, globus_sdk.token_storage.JSONTokenStorage)
    assert storage.filepath == str(config.state_dir / auth.TOKEN_FILE_NAME)


def test_no_client_at_all_explains_both_ways(config, monkeypatch):
    monkeypatch.setattr(auth, "DEFAULT_NATIVE_CLIENT_ID", None)
    with pytest.raises(ConfigError, match="PTYCHOFLOW_NATIVE_CLIENT_ID") as caught:
        auth.make_app(config, environ={})
    assert "PTYCHOFLOW_CLIENT_SECRET" in str(caught.value)


def test_token_file_is_owner_only(config):
    old_umask = os.umask(0o022)
    try:
        storage = auth.token_storage(config.state_dir, namespace="user-x")
        storage.store_token_data_by_resource_server(
            {
                "transfer.api.globus.org": TokenStorageData(
                    resource_server="transfer.api.globus.org",
                    identity_id=None,
                    scope="urn:globus:auth:scope:transfer.api.globus.org:all",
                    access_token="secret-token",
                    refresh_token="secret-refresh",
                    expires_at_seconds=2_000_000_000,
                    token_type="Bearer",
                )
            }
        )
    finally:
        os.umask(old_umask)
    token_file = config.state_dir / auth.TOKEN_FILE_NAME
    assert mode(token_file) == 0o600
    assert mode(config.state_dir) == 0o700


def test_existing_token_file_with_wide_permissions_is_tightened(config):
    config.state_dir.mkdir(mode=0o755)
    token_file = config.state_dir / auth.TOKEN_FILE_NAME
    token_file.write_text(
        json.dumps({"data": {}, "format_version": "2.0", "globus-sdk.version": "4"})
    )
    token_file.chmod(0o644)
    auth.make_app(config, environ={"PTYCHOFLOW_NATIVE_CLIENT_ID": NATIVE_ID})
    assert mode(token_file) == 0o600
    assert mode(config.state_dir) == 0o755  # never chmodded: not ours to change (issue 16)


def test_client_app_gets_a_token_and_uses_it(config, mocked_responses):
    """A real client-credentials grant against the mocked Auth service, then a Transfer call."""
    app = auth.make_app(
        config,
        environ={"PTYCHOFLOW_CLIENT_ID": CLIENT_ID, "PTYCHOFLOW_CLIENT_SECRET": "s3cret"},
    )
    transfer = auth.transfer_client(app)
    RegisteredResponse(
        service="auth",
        path="/v2/oauth2/token",
        method="POST",
        json={
            "access_token": "TRANSFER-TOKEN",
            "scope": "urn:globus:auth:scope:transfer.api.globus.org:all",
            "expires_in": 172800,
            "token_type": "Bearer",
            "resource_server": "transfer.api.globus.org",
            "other_tokens": [],
        },
    ).add()
    RegisteredResponse(
        service="transfer",
        path=f"/v0.10/operation/endpoint/{COLLECTION}/mkdir",
        method="POST",
        json={"code": "DirectoryCreated"},
    ).add()

    transfer.operation_mkdir(COLLECTION, "/data/input/100")

    token_request, mkdir_request = sent_requests()
    assert "grant_type=client_credentials" in token_request.body
    assert "transfer.api.globus.org%3Aall" in token_request.body
    assert mkdir_request.headers["Authorization"] == "Bearer TRANSFER-TOKEN"
    token_file = config.state_dir / auth.TOKEN_FILE_NAME
    assert mode(token_file) == 0o600
    stored = json.loads(token_file.read_text())["data"]
    assert list(stored) == [f"client-{CLIENT_ID}"]
    assert stored[f"client-{CLIENT_ID}"]["transfer.api.globus.org"]["access_token"] == (
        "TRANSFER-TOKEN"
    )


def test_make_clients_registers_every_scope_the_project_needs(config):
    app = auth.make_app(config, environ={"PTYCHOFLOW_NATIVE_CLIENT_ID": NATIVE_ID})
    flow_id = "24bc4997-b483-4c25-a19c-64b0afc00743"
    auth.make_clients(app, flow_id=flow_id, do_version_check=False)
    required = {
        resource_server: {str(scope) for scope in scopes}
        for resource_server, scopes in app.scope_requirements.items()
    }
    flows_scopes = required["flows.globus.org"]
    assert any(scope.endswith("/manage_flows") for scope in flows_scopes)
    assert any(scope.endswith("/run_status") for scope in flows_scopes)
    assert required["transfer.api.globus.org"] == {
        "urn:globus:auth:scope:transfer.api.globus.org:all"
    }
    assert any(
        scope.endswith("facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all")
        for scope in required["funcx_service"]
    )
    assert required[flow_id] == {
        f"https://auth.globus.org/scopes/{flow_id}/flow_{flow_id.replace('-', '_')}_user"
    }


def test_the_watcher_client_asks_for_least_privilege(config):
    """The watcher reads flows and runs and starts runs: no ``manage_flows`` (creating or
    changing flows) and no ``run_manage`` (Flows scopes: manage_flows, view_flows,
    run_status, run_manage are separate consents). Only ``cancel`` asks for run_manage."""
    app = auth.make_app(
        config,
        environ={"PTYCHOFLOW_CLIENT_ID": CLIENT_ID, "PTYCHOFLOW_CLIENT_SECRET": "s3cret"},
    )
    auth.make_clients(app, flow_id="24bc4997-b483-4c25-a19c-64b0afc00743", do_version_check=False)
    flows_scopes = {str(scope) for scope in app.scope_requirements["flows.globus.org"]}
    assert not any(scope.endswith("/manage_flows") for scope in flows_scopes)
    assert not any(scope.endswith("/run_manage") for scope in flows_scopes)
    assert any(scope.endswith("/run_status") for scope in flows_scopes)

    cancelling = auth.make_app(
        Config(state_dir=config.state_dir / "other"),
        environ={"PTYCHOFLOW_CLIENT_ID": CLIENT_ID, "PTYCHOFLOW_CLIENT_SECRET": "s3cret"},
    )
    auth.flows_client(cancelling, manage_runs=True)
    flows_scopes = {str(scope) for scope in cancelling.scope_requirements["flows.globus.org"]}
    assert any(scope.endswith("/run_manage") for scope in flows_scopes)


def test_data_access_scope_for_mapped_collections(config):
    app = auth.make_app(config, environ={"PTYCHOFLOW_NATIVE_CLIENT_ID": NATIVE_ID})
    flow_id = "24bc4997-b483-4c25-a19c-64b0afc00743"
    auth.specific_flow_client(flow_id, app, data_access_collections=[COLLECTION])
    flow_scope = " ".join(str(scope) for scope in app.scope_requirements[flow_id])
    assert f"{COLLECTION}/data_access" in flow_scope
