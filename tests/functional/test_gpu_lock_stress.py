"""GpuPool under real contention: many processes, one state file, SIGKILLed holders."""

from __future__ import annotations

import collections
import itertools
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
N_GPUS = 8
N_PROCESSES = 32
ROUNDS = 3

#: One competing claimant: claims 1-3 of 8 fake GPUs ROUNDS times, holds them a few ms,
#: and appends "gpu pid t_start t_end" lines (monotonic clock, shared by all processes
#: on the machine) to the log with O_APPEND, so lines from processes never interleave.
CLAIMANT = """  # argv: state file, log file, rounds, number of GPUs
import os, random, sys, time
from functions.gpu_lock import GpuPool
state, log, rounds, n_gpus = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pool = GpuPool(state, gpus=range(n_gpus))
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
rng = random.Random(os.getpid())
for _ in range(rounds):
    ids = pool.claim(rng.randint(1, 3), timeout=60, poll=0.005)
    t_start = time.monotonic()
    time.sleep(rng.uniform(0.002, 0.008))
    t_end = time.monotonic()
    lines = "".join(f"{g} {os.getpid()} {t_start!r} {t_end!r}\\n" for g in ids)
    os.write(fd, lines.encode())
    pool.release(ids)
"""

#: Claims N GPUs, says which, then holds them until killed.
HOLDER = """  # argv: state file, GPUs to claim, timeout
import sys, time
from functions.gpu_lock import GpuPool
pool = GpuPool(sys.argv[1], gpus=range(8))
print(" ".join(map(str, pool.claim(int(sys.argv[2]), timeout=float(sys.argv[3])))), flush=True)
time.sleep(120)
"""


def python(script: str, *args: object, **popen) -> subprocess.Popen:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)], env=env, text=True, **popen
    )


@pytest.mark.timeout(60)
def test_competing_processes_never_share_a_gpu(tmp_path):
    state, log = tmp_path / "availgpus", tmp_path / "holds.log"
    started = time.monotonic()
    procs = [
        python(CLAIMANT, state, log, ROUNDS, N_GPUS, stderr=subprocess.PIPE)
        for _ in range(N_PROCESSES)
    ]
    errors = [(p.wait(timeout=50), p.communicate()[1]) for p in procs]
    elapsed = time.monotonic() - started
    assert [rc for rc, _ in errors] == [0] * N_PROCESSES, [e for rc, e in errors if rc][:1]

    holds: dict[int, list[tuple[float, float, int]]] = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        gpu, pid, t_start, t_end = line.split()
        holds[int(gpu)].append((float(t_start), float(t_end), int(pid)))
    rounds_logged = {pid for intervals in holds.values() for *_, pid in intervals}
    assert len(rounds_logged) == N_PROCESSES
    assert set(holds) <= set(range(N_GPUS))
    for gpu, intervals in holds.items():
        intervals.sort()
        for (_, end, pid), (start, _, next_pid) in itertools.pairwise(intervals):
            assert start >= end, (
                f"GPU {gpu}: pid {next_pid} started at {start} while pid {pid} held it until {end}"
            )
    # Everything was released at the end.
    from functions.gpu_lock import GpuPool

    assert set(GpuPool(state, gpus=range(N_GPUS)).holders().values()) == {None}
    print(f"{N_PROCESSES} processes x {ROUNDS} claims on {N_GPUS} GPUs: {elapsed:.2f} s")


@pytest.mark.timeout(60)
def test_sigkilled_holder_gpus_go_to_a_waiting_claimant(tmp_path):
    state = tmp_path / "availgpus"
    holder = python(HOLDER, state, 6, 5, stdout=subprocess.PIPE)
    waiter = None
    try:
        held = holder.stdout.readline().split()
        assert held == [str(g) for g in range(6)]
        # Needs 4 of 8 with 6 held: it must wait until the holder is gone.
        waiter = python(HOLDER, state, 4, 20, stdout=subprocess.PIPE)
        time.sleep(0.5)
        assert waiter.poll() is None
        holder.send_signal(signal.SIGKILL)
        # Not reaped yet on purpose (a zombie must count as dead, too).
        got = waiter.stdout.readline().split()
        assert len(got) == 4 and set(got) & set(held), got
    finally:
        for proc in (holder, waiter):
            if proc is not None:
                proc.kill()
                proc.wait()
