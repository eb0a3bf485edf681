"""The portal under slow clients (issue 16, item 3): a real server process, real sockets.

Before: connections that never finished their headers were held for ever; at the
process's open-file limit every other request timed out, and the log filled. Here the
server runs with a small open-file limit (256) and 300 slow connections from 127.0.0.2
are opened (bounded count, loopback only, every wait bounded): a normal request from
127.0.0.1 must still be served, the slow ones must be closed by the server, and the log
must stay a few lines long.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import socket
import subprocess
import sys
import threading

import pytest

from flows.ledger import Ledger
from tests.functional.recording_backend import write_config

SLOW_CLIENTS = 300
FILE_LIMIT = 256


def small_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))


@pytest.fixture
def portal(tmp_path):
    root = tmp_path / "acquisition"
    root.mkdir()
    config = write_config(tmp_path / "ptychoflow.toml", root)
    Ledger(tmp_path / "ledger.sqlite").close()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PTYCHOFLOW_PORTAL")},
        "PTYCHOFLOW_PORTAL_HEADER_TIMEOUT": "1",
        "PTYCHOFLOW_PORTAL_MAX_PER_CLIENT": "16",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=small_file_limit,
    )
    try:
        first = process.stdout.readline()
        assert "portal at http://127.0.0.1:" in first, process.stderr.read()
        port = int(first.split("http://127.0.0.1:")[1].split("/")[0])
        assert "at most 128 connections (16 per client)" in first  # half of 256 descriptors
        errors: list[str] = []
        reader = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)
        reader.start()
        yield port, errors
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def slow_connection(port: int) -> socket.socket | None:
    """A connection from 127.0.0.2 that sends half a request head and then nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    except OSError:
        sock.close()
        return None
    return sock


def test_slow_clients_do_not_take_the_portal_down(portal):
    port, errors = portal
    slow = [s for s in (slow_connection(port) for _ in range(SLOW_CLIENTS)) if s is not None]
    try:
        assert len(slow) > FILE_LIMIT  # more than the server has descriptors for
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/")
        assert connection.getresponse().status == 200  # served while they are held
        connection.close()
        # Every slow connection is closed by the server: refused at once beyond the
        # limits, or after the header time-out (1 s here).
        for sock in slow:
            sock.settimeout(15)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b""
    finally:
        for sock in slow:
            sock.close()
    lines = [line for line in errors if line.strip()]
    assert len(lines) < 20, "".join(lines[:40])  # rate-limited, not one line each
    assert any("refusing more" in line for line in lines)
