"""No engine process outlives its owner: real run-flow processes, real signals.

The local backend's Compute engine runs an interchange and a worker pool (with its
workers) outside the owner's control. These tests start a real ``run-flow`` (or a
plain owner process holding a ``LocalComputeEngine``), stop it with a real signal,
and check that every process tied to its engine is gone within seconds; and that a
stale engine whose watch failed too is killed by the next engine's start-up check.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.local import tether
from flows.local.compute import LocalComputeEngine, _descendants, _processes_mentioning
from recon.simulate import write_simulated_scan

REPO = Path(__file__).resolve().parents[2]
#: Seconds the processes of a dead owner may take to go (the tether reacts at once).
GONE_WITHIN_S = 10.0

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="process ancestry is read from Linux /proc"
)


def busy(seconds: float) -> str:
    """A task that keeps its worker busy (a busy worker does not watch its manager)."""
    time.sleep(seconds)
    return "done"


def engine_processes(owner_pid: int, engines_dir: Path) -> dict[int, int]:
    """The owner's descendants and every process whose command line or process group
    ties it to an engine in ``engines_dir``: pid -> start ticks (the owner excluded)."""
    found = {pid: tether.process_start_ticks(pid) for pid in _descendants(owner_pid)}
    found.update(_processes_mentioning(str(engines_dir)))
    groups = {os.getpgid(pid) for pid in list(found) if _alive(pid)}
    groups.discard(os.getpgid(owner_pid))
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _alive(int(entry)):
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry)) in groups:
                    found[int(entry)] = tether.process_start_ticks(int(entry))
    found.pop(owner_pid, None)
    return {pid: start for pid, start in found.items() if start is not None}


def _alive(pid: int) -> bool:
    return tether.process_start_ticks(pid) is not None


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def survivors(processes: dict[int, int], within: float = GONE_WITHIN_S) -> dict[int, str]:
    deadline = time.monotonic() + within
    while True:
        alive = {p: command_line(p) for p, s in processes.items() if tether.is_same_process(p, s)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def kill_all(processes: dict[int, int]) -> None:
    for pid, start in processes.items():
        if tether.is_same_process(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def assert_has_interchange_and_pool(processes: dict[int, int]) -> None:
    lines = [command_line(pid) for pid in processes]
    assert any("interchange" in line for line in lines), lines
    assert any("process_worker_pool" in line for line in lines), lines


# -- run-flow ----------------------------------------------------------------------------


@pytest.fixture
def installation(tmp_path):
    """A local-backend installation with one scan whose single view takes minutes."""
    (tmp_path / "ptychoflow.toml").write_text(
        textwrap.dedent(
            """\
            backend = "local"
            acquisition_root = "acquisition"
            compute_root = "compute"
            ledger = "ptychoflow.sqlite"
            state_dir = ".ptychoflow"
            marker = ""
            [recon]
            backend = "numpy"
            """
        )
    )
    write_simulated_scan(
        tmp_path / "acquisition" / "scan100", n_views=1, detector=32, n_positions=16
    )
    return tmp_path


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: signal.Signals(s).name
)
def test_run_flow_stopped_by_a_signal_leaves_no_engine_process(installation, signum):
    engines_dir = installation / ".ptychoflow" / "engine"
    run_flow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--config",
            "ptychoflow.toml",
            "--scan",
            "100",
            "--iterations",
            "1000000",
        ],
        cwd=installation,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    processes: dict[int, int] = {}
    try:
        # The view is in compute/input (transfer done) and a worker pool is up: the
        # reconstruction is starting or running on a worker.
        wait_for(
            lambda: (
                (installation / "compute" / "input" / "100" / "view000.cxi").exists()
                and any(
                    "process_worker_pool" in command_line(p)
                    for p in _processes_mentioning(str(engines_dir))
                )
            ),
            "the view's reconstruction to start",
        )
        time.sleep(1.0)
        processes = engine_processes(run_flow.pid, engines_dir)
        assert_has_interchange_and_pool(processes)

        run_flow.send_signal(signum)
        if signum == signal.SIGINT:  # a second Ctrl-C ends the wait for running views
            with contextlib.suppress(subprocess.TimeoutExpired):
                run_flow.wait(timeout=5)
            if run_flow.poll() is None:
                run_flow.send_signal(signal.SIGINT)
        run_flow.wait(timeout=60)
        output = run_flow.stdout.read() if run_flow.stdout else ""
        assert "Traceback" not in output, output
        assert survivors(processes) == {}
    finally:
        if run_flow.poll() is None:
            run_flow.kill()
            run_flow.wait()
        kill_all(processes)


# -- a plain owner ------------------------------------------------------------------------

OWNER = textwrap.dedent(
    """\
    import sys, time
    from flows.local.compute import LocalComputeEngine
    from tests.functional.test_local_engine_processes import busy
    engine = LocalComputeEngine(run_dir=sys.argv[1], allowed_roots=[sys.argv[1]]).start()
    engine.submit(busy, 600)
    print(engine.engine_dir, flush=True)
    time.sleep(600)
    """
)


def start_owner(engines_dir: Path) -> tuple[subprocess.Popen[str], Path]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(engines_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    line = owner.stdout.readline().strip()
    assert line, f"owner exited with {owner.wait()}"
    engine_dir = Path(line)
    # Both helpers (interchange, worker pool) recorded by their tethers, the pool running.
    wait_for(
        lambda: (
            len(list((engine_dir / "helpers").glob("*.json"))) == 2
            and any(
                "process_worker_pool" in command_line(p)
                for p in _processes_mentioning(str(engine_dir))
            )
        ),
        "the engine's interchange and worker pool",
    )
    return owner, engine_dir


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_stale_engine_is_killed_by_the_next_start(tmp_path):
    """SIGKILL the owner while its tethers are stopped (their watch cannot act): the
    helpers survive it, and the next engine started in the same folder kills them."""
    engines_dir = tmp_path / "engines"
    owner, engine_dir = start_owner(engines_dir)
    processes = engine_processes(owner.pid, engines_dir)
    try:
        assert_has_interchange_and_pool(processes)
        tethers = {p for p in processes if "tether.py" in command_line(p)}
        assert len(tethers) == 2  # interchange and worker pool
        for pid in tethers:
            os.kill(pid, signal.SIGSTOP)
        owner.kill()
        owner.wait()
        time.sleep(1.0)
        stale = {p: s for p, s in processes.items() if tether.is_same_process(p, s)}
        assert_has_interchange_and_pool(stale)

        with LocalComputeEngine(run_dir=engines_dir, allowed_roots=[tmp_path]) as engine:
            assert survivors(processes, within=1.0) == {}  # killed during start()
            assert not engine_dir.exists()  # the stale folder is gone
            assert engine.engine_dir is not None and engine.engine_dir.is_dir()
    finally:
        if owner.poll() is None:
            owner.kill()
        kill_all(processes)


def test_a_stale_engines_detached_workers_are_found_by_group_and_start_time(tmp_path):
    """Issue 16, item 14: ``kill -9`` of run-flow and its tethers left the worker pool
    (started by ``bash -c '... &'``, whose leader exits at once) computing, and the next
    start did not stop it: its record's pid was gone and its command line names no
    engine folder. The next start now kills every member of the recorded process group
    that started after the group's recorded leader (a reused pgid does not count)."""
    import json
    import uuid

    from flows.local import tether
    from flows.local.compute import reap_stale_engines

    dead_owner = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner.wait()
    engines_dir = tmp_path / "engines"
    engine_dir = engines_dir / f"{dead_owner.pid}-1-{uuid.uuid4().hex[:8]}"
    (engine_dir / "helpers").mkdir(parents=True)
    leader = subprocess.Popen(
        ["bash", "-c", "sleep 300 >/dev/null & sleep 300 >/dev/null & echo started; read line"],
        start_new_session=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert leader.stdout.readline().strip() == "started"
    leader_start = tether.process_start_ticks(leader.pid)
    leader.communicate("go\n")  # the leader is gone; its two sleepers run on in its group
    workers = [
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and os.path.exists(f"/proc/{pid}/stat") and _pgrp(int(pid)) == leader.pid
    ]
    assert len(workers) == 2
    # As the tether wrote it when ``bash`` exited before its start time could be read:
    # no "start"; the tether's own (earlier) start bounds the group's members instead.
    record = {"role": "worker-pool", "tether_pid": 999999, "tether_start": leader_start,
              "pid": leader.pid, "start": None, "pgid": leader.pid,
              "owner_pid": dead_owner.pid, "owner_start": 1, "command": ["bash"]}  # fmt: skip
    (engine_dir / "helpers" / "999999.json").write_text(json.dumps(record))
    try:
        assert reap_stale_engines(engines_dir) == 2
        for pid in workers:
            deadline = time.monotonic() + 10
            while tether.process_start_ticks(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert tether.process_start_ticks(pid) is None, f"worker {pid} still runs"
        assert not engine_dir.exists()
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pgrp(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return int(stat_file.read().rsplit(b")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None
