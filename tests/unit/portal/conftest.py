"""Portal fixtures: a sample installation (real ledger, real result files) and the app
over it, in-process (Starlette's TestClient) or as a real uvicorn server on a port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
import uvicorn
from starlette.testclient import TestClient

from flows.backend import RunStatus
from portal.app import PortalSettings, create_app
from portal.auth import AccessPolicy
from tests.unit.portal.site import SampleView, sample_site

FAILED_ERROR = "view002.cxi: /entry_1/data_1/data contains NaN <img src=x onerror=alert(1)>"
GLOBUS_URL = "https://app.globus.org/runs/run-scan101-0"


def make_site(root):
    """scan100: 2 succeeded (2D probe, 3 probe modes), 1 failed, 1 running, 1 queued;
    scan101 (newer): 1 succeeded on the globus backend."""
    config = sample_site(
        root,
        {
            "scan100": [
                SampleView(),
                SampleView(modes=3),
                SampleView(RunStatus.FAILED, error=FAILED_ERROR),
                SampleView(RunStatus.ACTIVE, stage="transfer_out"),
                SampleView(RunStatus.PENDING),
            ],
        },
    )
    time.sleep(0.01)
    sample_site(root, {"scan101": [SampleView(web_url=GLOBUS_URL)]})
    return config


@pytest.fixture
def site(tmp_path):
    """A sample installation of the test's own (for tests that change it)."""
    return make_site(tmp_path)


@pytest.fixture(scope="module")
def shared_site(tmp_path_factory):
    """A sample installation shared by a module's tests that only read it."""
    return make_site(tmp_path_factory.mktemp("portal-site"))


def settings_for(config, policy=None):
    return PortalSettings(
        ledger=config.ledger,
        acquisition_root=config.acquisition_root,
        roots=[config.acquisition_root, config.compute_root],
        cache_dir=config.state_dir / "portal-cache",
        policy=policy or AccessPolicy(),
    )


@pytest.fixture(scope="module")
def client(shared_site):
    with TestClient(create_app(settings_for(shared_site)), follow_redirects=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def open_server(shared_site):
    """(host, port) of a real server over the shared site, open to local users."""
    with running_servers() as start:
        yield start(settings_for(shared_site))


@pytest.fixture
def serve():
    """Start the app on a real uvicorn server on 127.0.0.1; yields a function that takes
    settings and returns (host, port). Servers are stopped at the end."""
    with running_servers() as start:
        yield start


@contextlib.contextmanager
def running_servers():
    servers = []

    def start(settings):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), log_level="critical", access_log=False)
        )
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread, sock))
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        return sock.getsockname()

    try:
        yield start
    finally:
        for server, thread, sock in servers:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()
