"""Globus Auth login for `[portal] globus_group`, offline: the authorization-code flow of
the portal's confidential client and the group check, with the Globus HTTP APIs mocked
by globus_sdk.testing and the requests actually sent asserted."""

import base64
import urllib.parse

import pytest
import responses
from globus_sdk.testing import RegisteredResponse, get_last_request
from starlette.testclient import TestClient

from portal.app import create_app
from portal.auth import SESSION_COOKIE, AccessPolicy, GlobusGroupLogin
from tests.unit.portal.conftest import settings_for

CLIENT_ID = "8bd7a6f4-0b4c-4a0e-9a0c-5e1f5a1e2d3c"
CLIENT_SECRET = "portal-client-secret"
GROUP = "d3974728-6458-11e4-b72d-123139141556"
REDIRECT = "https://beamline.example.org:8008/login/callback"


def register_token_exchange():
    RegisteredResponse(
        service="auth",
        path="/v2/oauth2/token",
        method="POST",
        json={
            "access_token": "auth-access-token",
            "scope": "openid profile",
            "expires_in": 172800,
            "token_type": "Bearer",
            "resource_server": "auth.globus.org",
            "state": "ignored",
            "other_tokens": [
                {
                    "access_token": "groups-access-token",
                    "scope": "urn:globus:auth:scope:groups.api.globus.org:"
                    "view_my_groups_and_memberships",
                    "expires_in": 172800,
                    "token_type": "Bearer",
                    "resource_server": "groups.api.globus.org",
                }
            ],
        },
    ).add()


def register_my_groups(group_id, status="active"):
    RegisteredResponse(
        service="groups",
        path="/v2/groups/my_groups",
        method="GET",
        json=[
            {
                "id": group_id,
                "name": "2-ID-D beamtime 2026-3",
                "my_memberships": [
                    {
                        "group_id": group_id,
                        "identity_id": "ae332d86-d274-11e5-b885-b31714a110e9",
                        "username": "scientist@anl.gov",
                        "role": "member",
                        "status": status,
                    }
                ],
            }
        ],
    ).add()


@pytest.fixture
def client(site, monkeypatch):
    monkeypatch.delenv("GLOBUS_SDK_ENVIRONMENT", raising=False)
    login = GlobusGroupLogin(CLIENT_ID, CLIENT_SECRET, GROUP, REDIRECT)
    app = create_app(settings_for(site, AccessPolicy(globus=login)))
    responses.start()
    try:
        with TestClient(app, base_url="https://testserver", follow_redirects=False) as test:
            yield test
    finally:
        responses.stop()
        responses.reset()


def start_login(client):
    assert client.get("/").headers["location"] == "/login"
    assert client.get("/api/scans").status_code == 401
    start = client.get("/login")
    assert start.status_code == 303
    url = urllib.parse.urlsplit(start.headers["location"])
    assert (url.scheme, url.netloc, url.path) == (
        "https",
        "auth.globus.org",
        "/v2/oauth2/authorize",
    )
    query = urllib.parse.parse_qs(url.query)
    assert query["client_id"] == [CLIENT_ID]
    assert query["redirect_uri"] == [REDIRECT]
    assert query["response_type"] == ["code"]
    assert "view_my_groups_and_memberships" in query["scope"][0]
    assert "httponly" in start.headers["set-cookie"].lower()
    return query["state"][0]


def test_a_group_member_logs_in(client):
    state = start_login(client)
    register_token_exchange()
    register_my_groups(GROUP)
    done = client.get(f"/login/callback?code=the-code&state={state}")
    assert done.status_code == 303 and done.headers["location"] == "/"
    assert SESSION_COOKIE in done.headers["set-cookie"]

    exchange, groups = (call.request for call in responses.calls)
    body = urllib.parse.parse_qs(exchange.body)
    assert body["grant_type"] == ["authorization_code"]
    assert body["code"] == ["the-code"]
    assert body["redirect_uri"] == [REDIRECT]
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert exchange.headers["Authorization"] == f"Basic {basic}"
    assert groups.url.startswith("https://groups.api.globus.org/v2/groups/my_groups")
    assert groups.headers["Authorization"] == "Bearer groups-access-token"
    assert get_last_request() is groups

    assert client.get("/").status_code == 200
    assert client.get("/api/scans").status_code == 200


@pytest.mark.parametrize(
    ("group", "status"), [("99d2a548-7218-11e2-adc0-12313d2d6e7f", "active"), (GROUP, "invited")]
)
def test_not_a_member_is_refused(client, group, status):
    state = start_login(client)
    register_token_exchange()
    register_my_groups(group, status)
    refused = client.get(f"/login/callback?code=the-code&state={state}")
    assert refused.status_code == 403
    assert "not an active member" in refused.text
    assert SESSION_COOKIE not in refused.headers.get("set-cookie", "")
    assert client.get("/api/scans").status_code == 401


def test_a_callback_with_a_foreign_state_sends_nothing(client):
    start_login(client)
    response = client.get("/login/callback?code=the-code&state=forged")
    assert response.status_code == 401
    assert len(responses.calls) == 0  # no code exchange was attempted
