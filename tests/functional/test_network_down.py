"""``check`` and ``deploy`` when DNS fails (issue 16, item 15): one line each, no traceback.

The commands run as a user runs them, in a separate process, whose name resolution is
made to fail the way a host without network does (``socket.getaddrinfo`` raises
``EAI_AGAIN``, "Temporary failure in name resolution"): nothing leaves the machine.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

NO_DNS = """
import socket, sys
def no_dns(*args, **kwargs):
    raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
socket.getaddrinfo = no_dns
from globus_sdk.transport import RequestsTransport
RequestsTransport._retry_sleep = lambda *args, **kwargs: None  # the SDK's retries, no waits
from flows.cli import main
sys.exit(main(sys.argv[1:]))
"""

CONFIG = """
backend = "globus"
acquisition_root = "acquisition"
state_dir = "state"
[globus]
acquisition_collection = "a1a1a1a1-0000-4c61-8d0a-6a1e5b7c9d20"
compute_collection = "c0c0c0c0-0000-4c61-8d0a-6a1e5b7c9d20"
compute_endpoint = "e0e0e0e0-0000-4c61-8d0a-6a1e5b7c9d20"
compute_root_on_endpoint = "/eagle/project/ptycho"
watcher_client_id = "5d9c3e2e-6b3c-4a6e-9a57-0f9b1f4c8a11"
"""


def without_dns(command: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PTYCHOFLOW_CLIENT_ID": "5d9c3e2e-6b3c-4a6e-9a57-0f9b1f4c8a11",
        "PTYCHOFLOW_CLIENT_SECRET": "not-used-offline",
    }
    return subprocess.run(
        [sys.executable, "-c", NO_DNS, command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def site(tmp_path):
    (tmp_path / "ptychoflow.toml").write_text(CONFIG)
    return tmp_path


def test_check_prints_one_fail_line_per_check(site):
    done = without_dns("check", site)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stdout.splitlines()
    checks = [line for line in lines if line.startswith(("ok", "FAIL"))]
    assert len(checks) == 10 and all(line.startswith("FAIL ") for line in checks)
    assert "DNS lookup failed (Temporary failure in name resolution)" in checks[0]
    assert lines[-1] == "0/10 ok; fix the FAIL lines"


def test_deploy_prints_one_line(site):
    done = without_dns("deploy", site)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "ptychoflow deploy: error: cannot reach Globus: DNS lookup failed (Temporary "
        "failure in name resolution); check the network and DNS, then try again"
    ]
