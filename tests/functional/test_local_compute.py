"""LocalComputeEngine: a real GlobusComputeEngine (Parsl HTEX, LocalProvider), no cloud.

One engine serves the whole module (starting one costs a few seconds); the shutdown
test stops it and a later test would start a fresh one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import pytest

from flows.errors import ConfigError
from flows.local.compute import LocalComputeEngine, _descendants, _is_running, default_config_path
from flows.local.errors import ComputeTaskError, parse_remote_exception
from recon.errors import InputError


# Task functions: module level, so the workers import them from this module by name.
def worker_identity(x: int) -> dict:
    return {"double": 2 * x, "pid": os.getpid(), "cwd": os.getcwd()}


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def raise_input_error_from_key_error() -> None:
    try:
        {}["data"]
    except KeyError as err:
        raise InputError("scan100/view000.cxi: /entry_1/data_1/data is missing") from err


@pytest.fixture(scope="module")
def shared_engine(tmp_path_factory):
    # The workers inherit the environment when the engine starts: every tmp_path is
    # under the base temporary folder, the compute function's allowed root here.
    environment = pytest.MonkeyPatch()
    environment.setenv("PTYCHOFLOW_ALLOWED_ROOTS", str(tmp_path_factory.getbasetemp()))
    holder: dict[str, LocalComputeEngine | None] = {"engine": None}
    yield holder
    if holder["engine"] is not None:
        holder["engine"].shutdown()
    environment.undo()


@pytest.fixture
def engine(shared_engine, tmp_path_factory) -> LocalComputeEngine:
    current = shared_engine["engine"]
    if current is None or current.engine is None:
        run_dir = tmp_path_factory.mktemp("endpoint-run")
        # The tests' files live under pytest's base temporary folder.
        current = LocalComputeEngine(
            run_dir=run_dir, allowed_roots=[tmp_path_factory.getbasetemp()]
        ).start()
        shared_engine["engine"] = current
    return current


@pytest.mark.timeout(120)
def test_function_runs_in_a_worker_process(engine):
    started = time.monotonic()
    result = engine.submit(worker_identity, 21).result(timeout=90)
    print(f"first result after {time.monotonic() - started:.2f} s")
    assert result["double"] == 42
    assert result["pid"] != os.getpid()
    # The endpoint's execute_task ran it in the engine's task working directory.
    assert result["cwd"].startswith(str(engine.run_dir))


def worker_environment(name: str) -> str | None:
    return os.environ.get(name)


def test_workers_are_confined_to_the_allowed_roots(engine, tmp_path_factory):
    roots = engine.submit(worker_environment, "PTYCHOFLOW_ALLOWED_ROOTS").result(timeout=60)
    assert roots == os.path.realpath(tmp_path_factory.getbasetemp())


def test_remote_exception_message_reaches_the_caller(engine):
    future = engine.submit(raise_value_error, "bad value: 17 is not a view")
    with pytest.raises(ComputeTaskError) as info:
        future.result(timeout=60)
    err = info.value
    assert str(err) == "ValueError: bad value: 17 is not a view"
    assert err.remote_type == "ValueError"
    assert "raise_value_error" in err.remote_traceback


def test_chained_project_error_keeps_file_and_reason(engine):
    with pytest.raises(ComputeTaskError) as info:
        engine.submit(raise_input_error_from_key_error).result(timeout=60)
    err = info.value
    assert err.remote_type == "recon.errors.InputError"
    assert err.remote_message == "scan100/view000.cxi: /entry_1/data_1/data is missing"
    assert str(err) == "InputError: scan100/view000.cxi: /entry_1/data_1/data is missing"


def test_concurrent_submits_from_many_threads(engine):
    def submit_batch(start: int) -> list[concurrent.futures.Future]:
        return [engine.submit(worker_identity, start + i) for i in range(10)]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        batches = list(pool.map(submit_batch, range(0, 80, 10)))
    futures = [f for batch in batches for f in batch]
    results = [f.result(timeout=60)["double"] for f in futures]
    assert results == [2 * i for i in range(80)]


def test_reconstruct_view_bad_input_fails_with_file_and_reason(engine, tmp_path):
    from functions.reconstruct import reconstruct_view

    path = tmp_path / "scan100" / "view000.cxi"
    path.parent.mkdir()
    with h5py.File(path, "w") as cxi:
        cxi["/entry_1/sample_1/geometry_1/translation"] = np.zeros((3, 3))
    future = engine.submit(reconstruct_view, str(path), str(tmp_path / "recon"))
    with pytest.raises(ComputeTaskError) as info:
        future.result(timeout=60)
    assert info.value.remote_message == "scan100/view000.cxi: /entry_1/data_1/data is missing"
    assert info.value.remote_type == "recon.errors.InputError"


def test_reconstruct_view_through_the_engine(engine, tmp_path):
    """Needs recon.api: the real function, packed as an endpoint gets it, on a worker."""
    from functions.reconstruct import reconstruct_view
    from tests.unit.functions.test_reconstruct_function import write_cxi

    view = write_cxi(tmp_path / "input" / "100" / "view000.cxi")
    future = engine.submit(
        reconstruct_view, view, str(tmp_path / "recon" / "100"), {"iterations": 2}
    )
    summary = future.result(timeout=120)
    assert summary["output"] == str(tmp_path / "recon" / "100" / "view000.h5")
    assert os.path.isfile(summary["output"])
    assert summary["iterations"] == 2 and summary["backend"] == "numpy"


def test_shutdown_leaves_no_processes(engine):
    assert engine.submit(worker_identity, 1).result(timeout=60)["double"] == 2
    run_dir = str(engine.run_dir)
    engine_pids = _descendants(os.getpid()) | processes_mentioning(run_dir)
    assert len(engine_pids) >= 2, "expected at least the interchange and a worker pool"
    engine.shutdown()
    still_running = {pid for pid in engine_pids if _is_running(pid)}
    assert still_running == set()
    assert processes_mentioning(run_dir) == set()
    with pytest.raises(RuntimeError, match="not started"):
        engine.submit(worker_identity, 1)
    engine.shutdown()  # twice is fine


def processes_mentioning(text: str) -> set[int]:
    """Running PIDs whose command line holds ``text`` (the worker pools are detached)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if text.encode() in cmdline.read() and _is_running(int(entry)):
                    found.add(int(entry))
        except OSError:
            continue
    return found


# -- no engine needed -------------------------------------------------------------------


def test_default_config_is_the_packaged_local_one():
    path = default_config_path()
    assert path.parts[-2:] == ("endpoint_config", "local")
    assert (path / "config.yaml").is_file()
    assert (path / "user_config_template.yaml.j2").is_file()


def copy_of_local_endpoint(tmp_path, edit=lambda text: text):
    folder = tmp_path / "endpoint"
    shutil.copytree(default_config_path(), folder)
    template = folder / "user_config_template.yaml.j2"
    template.write_text(edit(template.read_text()))
    return folder


def test_missing_or_invalid_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: endpoint config not found"):
        LocalComputeEngine(config_path=tmp_path / "nope.yaml").start()
    # A 3.x single-file config: the engine belongs in the template now.
    old = tmp_path / "old" / "config.yaml"
    old.parent.mkdir()
    old.write_text("engine:\n  type: GlobusComputeEngine\n")
    with pytest.raises(ConfigError, match=r"old/config\.yaml: not a Globus Compute endpoint "):
        LocalComputeEngine(config_path=old).start()
    bad = copy_of_local_endpoint(
        tmp_path, lambda text: text.replace("type: GlobusComputeEngine", "type: NoSuchEngine")
    )
    with pytest.raises(
        ConfigError, match=r"template\.yaml\.j2: invalid endpoint config: .*NoSuchEngine"
    ):
        LocalComputeEngine(config_path=bad / "config.yaml").start()


def test_allowed_roots_must_be_absolute_paths_the_schema_accepts(tmp_path):
    engine = LocalComputeEngine(run_dir=tmp_path / "engines", allowed_roots=["/ok", "/a\nb"])
    with pytest.raises(ConfigError, match=r"user_config_schema\.json: option allowed_roots: "):
        engine.start()


def test_an_unencrypted_engine_is_refused(tmp_path):
    plain = copy_of_local_endpoint(
        tmp_path, lambda text: text.replace("encrypted: true", "encrypted: false")
    )
    with pytest.raises(ConfigError, match=r"`encrypted: false`: any account on this machine"):
        LocalComputeEngine(config_path=plain, run_dir=tmp_path / "engines").start()


def test_submit_before_start_is_refused():
    with pytest.raises(RuntimeError, match="not started"):
        LocalComputeEngine().submit(worker_identity, 1)


def test_parse_remote_exception_forms():
    chained = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "    {}['a']\n"
        "KeyError: 'a'\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 3, in f\n'
        "    raise InputError(...)\n"
        "    ^^^^^^^^^^^^^^^^^^^^^\n"
        "recon.errors.InputError: a.cxi: bad\nsecond line\n"
    )
    assert parse_remote_exception(chained) == ("recon.errors.InputError", "a.cxi: bad\nsecond line")
    assert parse_remote_exception("MaxResultSizeExceeded(12, 10)") == (
        "",
        "MaxResultSizeExceeded(12, 10)",
    )
    bare = "Traceback (most recent call last):\n  File 'x', line 1\nKeyboardInterrupt\n"
    assert parse_remote_exception(bare) == ("KeyboardInterrupt", "")


# -- another account on this machine ------------------------------------------------------

ATTACKER = """\
import os, pickle, sys, time
import zmq

marker, ports = sys.argv[1], [int(port) for port in sys.argv[2:]]


class Payload:
    def __reduce__(self):  # runs `id > marker` in whichever process unpickles it
        return (os.system, (f"id > {marker}",))


blob = pickle.dumps(Payload())
context = zmq.Context()
sockets = []
for port in ports:
    sock = context.socket(zmq.DEALER)  # talks to the engine's ROUTER and DEALER sockets
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sockets.append(sock)
time.sleep(1.0)  # let the connections come up
for sock in sockets:
    try:
        sock.send(blob, flags=zmq.NOBLOCK)
    except zmq.Again:
        pass
time.sleep(2.0)
print(f"sent to {len(ports)} ports as uid {os.getuid()}", flush=True)
"""
NOBODY = 65534


def listening_ports(pids: set[int]) -> set[int]:
    """TCP ports these processes listen on (Linux /proc)."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
def shared_folder():
    """A folder other accounts can read (pytest's own temporary folders are 0700)."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="ptychoflow-test-shared-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def python_for_another_account(shared_folder) -> list[str]:
    """A Python with pyzmq that uid nobody can run, or skip saying why not."""
    import zmq

    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("running a process as another uid needs root (setpriv --reuid)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    # The test's own environment may sit in a folder nobody cannot read: copy pyzmq.
    packages = shared_folder / "attacker-packages"
    site = os.path.dirname(os.path.dirname(zmq.__file__))
    for name in ("zmq", "pyzmq.libs"):
        if os.path.isdir(os.path.join(site, name)):
            shutil.copytree(os.path.join(site, name), packages / name)
    subprocess.run(["chmod", "-R", "a+rX", str(packages)], check=True)
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    for python in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        probe = subprocess.run(
            [*prefix, "env", f"PYTHONPATH={packages}", python, "-c", "import zmq"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return [*prefix, "env", f"PYTHONPATH={packages}", python]
    pytest.skip("no Python that uid nobody may run can import the copied pyzmq")


@pytest.mark.timeout(120)
def test_another_account_cannot_run_code_through_the_engine_ports(engine, tmp_path, shared_folder):
    """As uid nobody, send a pickle that would run `id > marker` to every port the
    engine's processes listen on: with CurveZMQ the handshake fails, nothing runs."""
    attacker = python_for_another_account(shared_folder)
    assert engine.submit(worker_identity, 1).result(timeout=60)["double"] == 2  # all up
    ports = listening_ports({os.getpid(), *_descendants(os.getpid())})
    # The executor's task, result and command sockets and the interchange's worker port.
    assert len(ports) >= 4, ports
    marker_dir = tmp_path / "only-root-writes-here"
    marker_dir.mkdir(mode=0o755)  # nobody cannot create the marker itself
    marker = marker_dir / "payload-ran"
    sent = subprocess.run(
        [*attacker, "-c", ATTACKER, str(marker), *map(str, sorted(ports))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert f"sent to {len(ports)} ports as uid {NOBODY}" in sent.stdout
    time.sleep(2.0)
    assert not marker.exists(), marker.read_text()
    # ... and the engine still works for its owner.
    assert engine.submit(worker_identity, 21).result(timeout=60)["double"] == 42
