"""GpuPool and choose_gpu_count in one process (the multi-process stress test is functional)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from functions.gpu_lock import (
    GpuPool,
    GpuUnavailableError,
    choose_gpu_count,
    process_start_time,
    visible_gpus,
)
from recon.errors import DeviceError, PtychoflowError


@pytest.fixture
def state_path(tmp_path):
    return tmp_path / "availgpus"


def read_state(path):
    return json.loads(path.read_text())


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claim_records_pid_and_release_frees(state_path):
    pool = GpuPool(state_path, gpus=range(4))
    ids = pool.claim(2, timeout=0)
    assert ids == [0, 1]
    state = read_state(state_path)
    assert state["0"]["pid"] == os.getpid() and state["1"]["pid"] == os.getpid()
    assert state["0"]["start"] == process_start_time(os.getpid())
    assert state["2"] is None and state["3"] is None
    assert pool.claim(2, timeout=0) == [2, 3]
    pool.release(ids)
    assert pool.holders() == {"0": None, "1": None, "2": os.getpid(), "3": os.getpid()}


def test_context_manager_releases_on_error(state_path):
    pool = GpuPool(state_path, gpus=range(2))
    with pytest.raises(RuntimeError, match="boom"), pool.claimed(2, timeout=0) as ids:
        assert ids == [0, 1]
        raise RuntimeError("boom")
    assert pool.holders() == {"0": None, "1": None}


def test_timeout_error_names_count_host_and_holders(state_path):
    pool = GpuPool(state_path, gpus=range(2))
    pool.claim(2, timeout=0)
    with pytest.raises(GpuUnavailableError) as info:
        pool.claim(1, timeout=0.2, poll=0.05)
    message = str(info.value)
    assert f"no 1 GPUs free on {pool.host} after 0.2 s" in message
    assert f"held by PIDs {os.getpid()}" in message
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, PtychoflowError)


def test_more_than_the_node_has_fails_at_once(state_path):
    pool = GpuPool(state_path, gpus=range(4))
    with pytest.raises(DeviceError, match=r"5 GPUs asked for, but .* has 4"):
        pool.claim(5, timeout=100)
    with pytest.raises(DeviceError, match="integer >= 1"):
        pool.claim(0)


def test_dead_claimant_is_reclaimed(state_path):
    pid = dead_pid()
    state_path.write_text(json.dumps({"0": {"pid": pid, "start": None}, "1": None}))
    pool = GpuPool(state_path, gpus=[0, 1])
    assert pool.claim(2, timeout=0) == [0, 1]


def test_reused_pid_with_other_start_time_is_reclaimed(state_path):
    # Our own PID is alive, but the recorded start time is not ours: a reused PID.
    me = process_start_time(os.getpid())
    if me is None:
        pytest.skip("/proc/<pid>/stat not available")
    state_path.write_text(json.dumps({"0": {"pid": os.getpid(), "start": me - 1}}))
    pool = GpuPool(state_path, gpus=[0])
    assert pool.claim(1, timeout=0) == [0]


def test_live_other_process_is_not_reclaimed(state_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = process_start_time(holder.pid)
        state_path.write_text(json.dumps({"0": {"pid": holder.pid, "start": start}}))
        pool = GpuPool(state_path, gpus=[0, 1])
        assert pool.claim(1, timeout=0) == [1]
        with pytest.raises(GpuUnavailableError) as info:
            pool.claim(1, timeout=0)
        pids = sorted([holder.pid, os.getpid()])
        assert f"held by PIDs {pids[0]}, {pids[1]}" in str(info.value)
        pool.release([0])  # not ours: left alone
        assert pool.holders()["0"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", "\xff\xfe", '{"0": 7}'])
def test_missing_empty_or_corrupt_state_is_rebuilt(state_path, content):
    state_path.write_bytes(content.encode("latin-1"))
    pool = GpuPool(state_path, gpus=range(3))
    assert pool.claim(3, timeout=0) == [0, 1, 2]
    assert set(read_state(state_path)) == {"0", "1", "2"}


def test_gpu_list_change_keeps_other_workers_gpus(state_path):
    # Worker A sees GPU 0 only (Parsl pinned it), worker B sees GPU 1; one node-wide file.
    a = GpuPool(state_path, gpus=[0])
    a.claim(1, timeout=0)
    b = GpuPool(state_path, gpus=[1, 2])
    assert b.claim(2, timeout=0) == [1, 2]
    state = read_state(state_path)
    assert {k: v["pid"] for k, v in state.items()} == {str(g): os.getpid() for g in (0, 1, 2)}


def test_uuid_gpu_ids_and_device_ordinals(state_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 1,GPU-abc")
    assert visible_gpus() == [3, 1, "GPU-abc"]
    pool = GpuPool(state_path)
    ids = pool.claim(3, timeout=0)
    assert pool.device_ordinals(ids[1:]) == [1, 2]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PTYCHOFLOW_GPU_LOCK", str(tmp_path / "from-env"))
    pool = GpuPool(gpus=[0])
    pool.claim(1, timeout=0)
    assert (tmp_path / "from-env").exists()


def test_unwritable_state_file_names_the_path(tmp_path):
    pool = GpuPool(tmp_path / "no" / "such" / "dir" / "availgpus", gpus=[0])
    with pytest.raises(DeviceError, match=r"cannot open the GPU lock file .*PTYCHOFLOW_GPU_LOCK"):
        pool.claim(1, timeout=0)


def test_duplicate_gpus_rejected(state_path):
    with pytest.raises(DeviceError, match="same GPU twice"):
        GpuPool(state_path, gpus=[0, "0"])


# -- choose_gpu_count ---------------------------------------------------------------


def test_requested_wins_and_is_capped():
    assert choose_gpu_count(10, (64, 64), available=4, requested=3) == 3
    with pytest.raises(DeviceError, match=r"devices=5 .* 4 available"):
        choose_gpu_count(10_000, (256, 256), available=4, requested=5)
    with pytest.raises(DeviceError, match="no GPU"):
        choose_gpu_count(10, (64, 64), available=0)


@pytest.mark.parametrize(
    ("n_positions", "shape", "available", "expected"),
    [
        (100, (256, 256), 4, 1),  # few positions
        (999, (128, 128), 4, 1),  # just under the position threshold
        (5000, (64, 64), 4, 1),  # many positions, small frames
        (1000, (128, 128), 4, 2),  # 1000 x 128^2 = two GPU shares
        (1600, (128, 128), 4, 4),  # ceil(3.2) = 4
        (20000, (256, 256), 4, 4),  # capped at one node
        (20000, (256, 256), 2, 2),  # capped by what is there
        (20000, (256, 256), 1, 1),
    ],
)
def test_automatic_choice_from_view_size(n_positions, shape, available, expected):
    assert choose_gpu_count(n_positions, shape, available) == expected


def test_zombie_claimant_is_reclaimed(state_path):
    # Exited but not reaped: os.kill(pid, 0) still succeeds, /proc says state Z.
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        start = process_start_time(zombie.pid)
        if start is None:
            pytest.skip("/proc/<pid>/stat not available")
        state_path.write_text(json.dumps({"0": {"pid": zombie.pid, "start": start}}))
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, still unreaped
        assert GpuPool(state_path, gpus=[0]).claim(1, timeout=0) == [0]
    finally:
        zombie.wait()
