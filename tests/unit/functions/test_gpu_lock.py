"""GpuPool and choose_gpu_count in one process (the multi-process stress test is functional)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import time

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
    """The claim table of a state file this module wrote."""
    document = json.loads(path.read_text())
    assert document["format"] == "ptychoflow-gpu-lock/1"
    return document["gpus"]


def running(*command: str) -> subprocess.Popen:
    """Start ``command`` and return once it runs it (its /proc cmdline is ``command``'s):
    before that a forked child still shows its parent's command line."""
    proc = subprocess.Popen(list(command))
    expected = "\0".join(command).encode()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if pathlib.Path(f"/proc/{proc.pid}/cmdline").read_bytes().rstrip(b"\0") == expected:
                return proc
        except OSError:
            return proc  # no /proc: nothing to wait for
        time.sleep(0.01)
    return proc


PYTHON_SLEEPER = (sys.executable, "-c", "import time; time.sleep(30)")


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
    holder = running(*PYTHON_SLEEPER)
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


OURS = '{"format": "ptychoflow-gpu-lock/1", "gpus": '


@pytest.mark.parametrize(
    "content",
    [
        "",  # created, never written
        OURS,  # truncated mid-write
        OURS + '{"0": {"pid": 1' + "0" * 40 + ', "start": 5}}}',  # a huge pid
        OURS + '{"0": ' + "[" * 100_000 + "]" * 100_000 + "}}",  # deep nesting, 200 kB
        OURS + '{"0": ' + "[" * 5_000 + "]" * 5_000 + "}}",  # deep nesting within the bound
        OURS + '{"0": {"pid": -3, "start": 1}, "1": "x", "2": {"pid": 5, "start": 1, "cmd": 1}}}',
        '{"format": "ptychoflow-gpu-lock/9", "gpus": {}}',  # a format we do not know
        '{"0": 7}',  # the previous format, malformed
        '{"0": {"pid": 99999999999999999999999999, "start": null}}',  # previous format
        '{"0": ' + "[" * 50_000 + "]" * 50_000 + "}",  # previous format, deep nesting
        '{"0": {"pid": 1, "st\xff',  # previous format, truncated, not UTF-8
    ],
    ids=lambda content: repr(content[:60]),
)
def test_malformed_content_of_a_lock_file_is_rebuilt(state_path, content):
    """Our own file, damaged: every claim still works, and the file is ours again."""
    state_path.write_bytes(content.encode("latin-1"))
    state_path.chmod(0o600)
    pool = GpuPool(state_path, gpus=range(3))
    assert pool.claim(3, timeout=0) == [0, 1, 2]
    assert set(read_state(state_path)) >= {"0", "1", "2"}
    assert {v["pid"] for v in read_state(state_path).values() if v} == {os.getpid()}


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[1, 2]",
        b"\xff\xfe",
        b"my beamtime notes\n",
        b"\x89HDF\r\n\x1a\n" + bytes(64),
    ],
)
def test_an_unrelated_file_is_refused_and_left_untouched(state_path, content, monkeypatch):
    """PTYCHOFLOW_GPU_LOCK pointing at an existing file used to overwrite it."""
    state_path.write_bytes(content)
    state_path.chmod(0o600)
    monkeypatch.setenv("PTYCHOFLOW_GPU_LOCK", str(state_path))
    with pytest.raises(DeviceError, match="is not a ptychoflow GPU lock file") as info:
        GpuPool(gpus=[0]).claim(1, timeout=0)
    assert str(state_path) in str(info.value) and "PTYCHOFLOW_GPU_LOCK" in str(info.value)
    assert state_path.read_bytes() == content


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
    with pytest.raises(DeviceError, match=r"cannot use the folder .*no/such/dir of the GPU lock"):
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


# -- the state file is untrusted: links, owners, modes (issue 7, item 8) --------------------


def as_nobody(*command: str) -> None:
    """Run ``command`` as uid/gid 65534 (root only)."""
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    subprocess.run([*drop, *command], check=True)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="files of another user can only be made as root (with setpriv)",
)


@pytest.fixture
def shared_folder():
    """A world-writable sticky folder like /dev/shm, for files of several users."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="ptychoflow-shm-"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder)


def test_new_file_is_private_or_group_shared_on_purpose(tmp_path):
    private = tmp_path / "private"
    GpuPool(private, gpus=[0]).claim(1, timeout=0)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    shared = tmp_path / "shared"
    GpuPool(shared, gpus=[0], group_shared=True).claim(1, timeout=0)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o660  # exactly, despite umask 022


def test_symlink_is_never_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("do not overwrite")
    link = tmp_path / "availgpus"
    link.symlink_to(victim)
    with pytest.raises(DeviceError, match="is a symbolic link; refusing to follow it"):
        GpuPool(link, gpus=[0]).claim(1, timeout=0)
    assert victim.read_text() == "do not overwrite"
    dangling = tmp_path / "availgpus2"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(DeviceError, match="symbolic link"):
        GpuPool(dangling, gpus=[0]).claim(1, timeout=0)
    assert not (tmp_path / "would-be-created").exists()


@needs_root
def test_another_users_file_is_refused(tmp_path):
    folder = tmp_path / "lock"
    folder.mkdir(mode=0o755)
    planted = folder / "availgpus"
    planted.write_bytes(b"")
    os.chown(planted, 65534, 65534)
    planted.chmod(0o644)
    with pytest.raises(DeviceError, match="belongs to uid 65534, not to this user"):
        GpuPool(planted, gpus=[0]).claim(1, timeout=0)
    assert planted.read_bytes() == b""


# -- the lock folder: squatting (issue 16, item 5) ------------------------------------------


def test_a_folder_others_can_write_is_refused(shared_folder):
    """/dev/shm-like folders are refused: anyone could plant or hold the file there."""
    victim = shared_folder / "availgpus"
    with pytest.raises(DeviceError, match=r"folder .* writable by other users \(mode 1777\)"):
        GpuPool(victim, gpus=[0]).claim(1, timeout=0)
    assert not victim.exists()


def test_a_group_writable_folder_only_when_group_shared(tmp_path):
    folder = tmp_path / "group"
    folder.mkdir()
    folder.chmod(0o770)
    with pytest.raises(DeviceError, match="writable by other users"):
        GpuPool(folder / "availgpus", gpus=[0]).claim(1, timeout=0)
    assert GpuPool(folder / "availgpus", gpus=[0], group_shared=True).claim(1, timeout=0) == [0]


def test_default_lock_is_in_a_private_per_user_folder(shared_folder, monkeypatch):
    """The default is <shm>/ptychoflow-<uid>/availgpus, the folder created 0700."""
    import functions.gpu_lock as gpu_lock

    monkeypatch.delenv("PTYCHOFLOW_GPU_LOCK", raising=False)
    monkeypatch.setattr(gpu_lock, "DEFAULT_STATE_FOLDER", str(shared_folder / "ptychoflow-{uid}"))
    pool = GpuPool(gpus=[0])
    folder = shared_folder / f"ptychoflow-{os.geteuid()}"
    assert pool.path == str(folder / "availgpus")
    assert pool.claim(1, timeout=0) == [0]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "availgpus").is_file()


@needs_root
def test_a_squatter_cannot_block_the_default_lock(shared_folder, monkeypatch):
    """Another account pre-creating the old fixed name no longer blocks the GPUs; one that
    pre-creates our per-user folder is named in a refusal, and that folder is left alone."""
    import functions.gpu_lock as gpu_lock

    monkeypatch.delenv("PTYCHOFLOW_GPU_LOCK", raising=False)
    monkeypatch.setattr(gpu_lock, "DEFAULT_STATE_FOLDER", str(shared_folder / "ptychoflow-{uid}"))
    as_nobody("sh", "-c", f"printf junk > {shared_folder / 'availgpus'}")  # the old default
    assert GpuPool(gpus=[0]).claim(1, timeout=0) == [0]

    monkeypatch.setattr(gpu_lock, "DEFAULT_STATE_FOLDER", str(shared_folder / "squat-{uid}"))
    squatted = shared_folder / f"squat-{os.geteuid()}"
    as_nobody("mkdir", "-m", "0777", str(squatted))
    with pytest.raises(DeviceError, match="belongs to uid 65534, not to this user"):
        GpuPool(gpus=[0]).claim(1, timeout=0)
    assert stat.S_IMODE(squatted.stat().st_mode) == 0o777  # never chmodded
    assert list(squatted.iterdir()) == []


def test_hard_link_and_writable_by_others_are_refused(tmp_path):
    mine = tmp_path / "availgpus"
    GpuPool(mine, gpus=[0]).claim(1, timeout=0)
    os.link(mine, tmp_path / "second-name")
    with pytest.raises(DeviceError, match="has 2 hard links"):
        GpuPool(mine, gpus=[0]).holders()
    os.unlink(tmp_path / "second-name")
    mine.chmod(0o666)
    with pytest.raises(DeviceError, match=r"writable by other users \(mode 0666\); chmod 600"):
        GpuPool(mine, gpus=[0]).holders()


def test_lock_descriptor_is_not_inherited(state_path):
    pool = GpuPool(state_path, gpus=[0])
    with pool._locked_state():
        listing = subprocess.run(
            ["ls", "-l", "/proc/self/fd/"], capture_output=True, text=True, check=True
        ).stdout
    assert str(state_path) not in listing


# -- claims by processes that are not ptychoflow claimants ----------------------------------


def test_live_process_that_is_not_a_claimant_does_not_hold_a_gpu(state_path):
    """A recorded PID whose process runs something else (`sleep`), with its real start
    time: the claim used to keep the GPU busy for the whole wait (3600 s)."""
    stranger = running("sleep", "60")
    try:
        start = process_start_time(stranger.pid)
        if start is None:
            pytest.skip("/proc/<pid>/stat not available")
        claim = {"pid": stranger.pid, "start": start}
        state_path.write_text(json.dumps({"0": claim}))  # the previous format
        assert GpuPool(state_path, gpus=[0]).claim(1, timeout=0) == [0]
        state_path.write_text(json.dumps({"format": "ptychoflow-gpu-lock/1", "gpus": {"0": claim}}))
        assert GpuPool(state_path, gpus=[0]).claim(1, timeout=0) == [0]
    finally:
        stranger.kill()
        stranger.wait()


def test_unverifiable_or_foreign_user_claims_are_reclaimed(state_path):
    """A live Python claimant, but the claim lacks its start time or names another uid."""
    holder = running(*PYTHON_SLEEPER)
    try:
        start = process_start_time(holder.pid)
        if start is None:
            pytest.skip("/proc/<pid>/stat not available")
        for claim in (
            {"pid": holder.pid, "start": None},
            {"pid": holder.pid, "start": start, "uid": os.geteuid() + 1},
        ):
            state_path.write_text(json.dumps({"0": claim}))
            assert GpuPool(state_path, gpus=[0]).claim(1, timeout=0) == [0]
        state_path.write_text(json.dumps({"0": {"pid": holder.pid, "start": start}}))
        with pytest.raises(GpuUnavailableError):  # the real claimant keeps its GPU
            GpuPool(state_path, gpus=[0]).claim(1, timeout=0)
    finally:
        holder.kill()
        holder.wait()
