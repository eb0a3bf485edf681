"""Attacks on a real portal server (uvicorn on a port, raw request paths sent unaltered),
the token, and the refusal to expose results without access control."""

import http.client
import subprocess
import sys

import pytest

from flows.config import load_config
from portal.auth import TOKEN_COOKIE, AccessPolicy
from portal.cli import settings_from_config
from portal.errors import PortalConfigError
from tests.unit.portal.conftest import settings_for

TOKEN = "s3cret-token-0123456789abcdefGHIJKLMN"  # 37 characters, 29 distinct

TRAVERSALS = [
    "/scans/../../../etc/passwd",
    "/scans/scan100/views/../../../etc/passwd",
    "/static/../app.py",
    "/static/%2e%2e/app.py",
    "/static/%2E%2E%2Fapp.py",
    "/static/..%2fapp.py",
    "/static/..%5capp.py",
    "/scans/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/scans/scan100%2fviews%2fview000",
    "/scans/%252e%252e%252fetc%252fpasswd",
    "/scans/scan100/views/view000/images/..%2f..%2fsummary.png",
    "/scans/scan100/views/view000/images/%2fetc%2fpasswd.png",
    "//etc/passwd",
    "/scans//etc/passwd",
    "/scans/%00/views/view000",
    "/api/scans/..%2f..%2fetc%2fpasswd",
    "/scans/scan100/views/view000/result.h5/../../../../etc/passwd",
]


def raw_get(address, path, headers=None):
    """Send ``path`` exactly as given (no client-side normalisation)."""
    headers = headers or {}
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.putrequest("GET", path, skip_host="Host" in headers, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return (
            response.status,
            dict(response.getheaders()),
            response.read().decode(errors="replace"),
        )
    finally:
        connection.close()


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_404_without_a_trace(open_server, path):
    status, headers, body = raw_get(open_server, path)
    assert status == 404, (path, status, body[:200])
    assert "Traceback" not in body and "root:" not in body and "import" not in body
    assert headers["x-content-type-options"] == "nosniff"


def test_absolute_and_odd_request_targets_are_refused(open_server):
    for target in ("http://evil.example/etc/passwd", "/etc/passwd", "/scans/scan100/../.."):
        status, _, body = raw_get(open_server, target)
        assert status in (400, 404), target
        assert "Traceback" not in body


def test_token_is_required_and_accepted_as_bearer_or_once_in_the_url(site, serve):
    address = serve(settings_for(site, AccessPolicy(token=TOKEN)))
    for path in ("/", "/api/scans", "/scans/scan100/views/view000/result.h5"):
        status, headers, body = raw_get(address, path)
        assert status == 401, path
        assert headers["www-authenticate"].startswith("Bearer")
        assert "Traceback" not in body
    assert raw_get(address, "/", {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
    assert raw_get(address, "/api/scans", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert raw_get(address, "/?token=not-it")[0] == 401

    status, headers, _ = raw_get(address, f"/scans/scan100?token={TOKEN}&x=1")
    assert status == 303
    assert headers["location"] == "/scans/scan100?x=1"  # the token leaves the URL
    cookie = headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie  # the cookie holds a keyed hash, not the token
    value = cookie.split(";")[0]
    assert value.startswith(TOKEN_COOKIE + "=")
    assert raw_get(address, "/scans/scan100", {"Cookie": value})[0] == 200
    forged = TOKEN_COOKIE + "=" + "0" * 64
    assert raw_get(address, "/scans/scan100", {"Cookie": forged})[0] == 401


def test_a_public_address_needs_a_token_or_a_group(site, monkeypatch):
    monkeypatch.delenv("PTYCHOFLOW_PORTAL_TOKEN", raising=False)
    settings_from_config(site, "127.0.0.1")  # local: fine
    settings_from_config(site, "::1")
    with pytest.raises(PortalConfigError, match=r"refusing to serve on 0\.0\.0\.0"):
        settings_from_config(site, "0.0.0.0")
    monkeypatch.setenv("PTYCHOFLOW_PORTAL_TOKEN", "short")
    with pytest.raises(PortalConfigError, match="at least 32"):
        settings_from_config(site, "0.0.0.0")
    monkeypatch.setenv("PTYCHOFLOW_PORTAL_TOKEN", TOKEN)
    assert settings_from_config(site, "0.0.0.0").policy.token == TOKEN
    monkeypatch.delenv("PTYCHOFLOW_PORTAL_TOKEN")
    site.portal.globus_group = "d3974728-6458-11e4-b72d-123139141556"
    with pytest.raises(PortalConfigError, match="client_id"):
        settings_from_config(site, "0.0.0.0")


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        (" " * 16, "at least 32"),
        ("a" * 16, "at least 32"),
        (" " * 40, "spaces or control characters"),
        ("a" * 40, "only 1 distinct characters"),
        ("abababababababababababababababab", "only 2 distinct characters"),
        ("0123456789" * 4, "only 10 distinct characters"),
        ("tab\there-" + "x" * 30, "spaces or control characters"),
    ],
)
def test_weak_tokens_are_refused_and_the_refusal_says_how_to_make_one(
    site, monkeypatch, token, problem
):
    """Issue 16, item 4: 16 spaces or 'aaaaaaaaaaaaaaaa' were accepted for 0.0.0.0."""
    monkeypatch.setenv("PTYCHOFLOW_PORTAL_TOKEN", token)
    with pytest.raises(PortalConfigError) as caught:
        settings_from_config(site, "0.0.0.0")
    assert problem in str(caught.value)
    assert "secrets.token_urlsafe(32)" in str(caught.value)
    assert token.strip() not in str(caught.value) or not token.strip()  # never echoed


def test_a_random_token_is_accepted(site, monkeypatch):
    import secrets

    token = secrets.token_urlsafe(32)
    monkeypatch.setenv("PTYCHOFLOW_PORTAL_TOKEN", token)
    assert settings_from_config(site, "0.0.0.0").policy.token == token


def test_serve_refuses_a_public_address_as_a_command(tmp_path):
    (tmp_path / "ptychoflow.toml").write_text('backend = "local"\n[portal]\nglobus_group = ""\n')
    assert load_config(tmp_path / "ptychoflow.toml").portal.globus_group == ""
    run = subprocess.run(
        [sys.executable, "-m", "flows.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 1
    assert "refusing to serve on 0.0.0.0" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "ptychoflow.sqlite").exists()  # nothing created


def test_an_open_portal_answers_only_to_local_host_names(site, serve, monkeypatch):
    # A page on another site cannot read the portal through a name rebound to 127.0.0.1.
    monkeypatch.delenv("PTYCHOFLOW_PORTAL_TOKEN", raising=False)
    settings = settings_from_config(site, "127.0.0.1")
    assert settings.loopback_hosts_only
    address = serve(settings)
    assert raw_get(address, "/api/scans", {"Host": "attacker.example:8008"})[0] == 400
    for host in ("127.0.0.1:8008", "localhost:9000", "[::1]:8008", "localhost"):
        assert raw_get(address, "/api/scans", {"Host": host})[0] == 200, host
