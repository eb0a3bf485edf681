"""Keep one engine helper process from outliving the process that owns the engine.

The local backend's Compute engine starts helper processes the owner does not
control directly: Parsl starts the interchange with ``subprocess.Popen`` (no
process group of its own, no parent-death signal) and the worker pool through a
``bash -c '... &'`` that detaches it at once. When the owner (``run-flow``, the
watcher) dies, by SIGKILL included, they would run on. Each helper is therefore
started through this tether::

    python -I tether.py --owner PID:START --records DIR --role NAME -- COMMAND ...

The tether

- checks that the owner (pid and kernel start time, so a reused pid does not
  count) is alive, else exits 75 without starting anything;
- starts COMMAND in a process group of its own (Ctrl-C in the owner's terminal
  does not reach it; the owner shuts the engine down in order) with the
  parent-death signal SIGKILL (``prctl(PR_SET_PDEATHSIG)``), so COMMAND dies if
  the tether is killed;
- records both processes in ``DIR/<tether pid>.json`` (pids, start times,
  process group, owner), which lets the next owner find and kill them should
  everything else fail (see ``flows.local.compute``);
- watches the owner with a pidfd: when the owner exits, COMMAND's whole process
  group gets SIGTERM, then SIGKILL after a grace period;
- forwards SIGTERM/SIGHUP to that process group (Parsl stops the interchange
  and cancels worker blocks with SIGTERM), and exits with COMMAND's status.

It watches the owner instead of taking the owner's parent-death signal itself:
that signal fires when the *thread* that started the child ends, and engines may
be started from a worker thread. This file uses the standard library only and
runs as a script (``python -I``), so it starts in milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time

#: ``prctl`` option from <linux/prctl.h>.
PR_SET_PDEATHSIG = 1
#: Exit status when the owner is already gone (EX_TEMPFAIL).
OWNER_GONE = 75
#: Seconds COMMAND's process group gets between SIGTERM and SIGKILL.
GRACE_SECONDS = 3.0


def process_start_ticks(pid: int) -> int | None:
    """Kernel start time of ``pid`` (clock ticks since boot); None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def is_same_process(pid: int, start_ticks: int) -> bool:
    """Whether ``pid`` is alive and is the process that started at ``start_ticks``."""
    return process_start_ticks(pid) == start_ticks


def group_exists(pgid: int) -> bool:
    """Whether a process group has a member that is not a zombie (``kill(-pgid, 0)``
    also counts zombies, which an init process may take seconds to reap)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _write_record(path: str, record: dict[str, object]) -> None:
    partial = f"{path}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle)
    os.replace(partial, path)


def _stop_group(child: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the child's process group, SIGKILL what is left after ``grace`` seconds."""
    _signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if child.poll() is not None and not group_exists(child.pid):
            return
        time.sleep(0.05)
    _signal_group(child.pid, signal.SIGKILL)
    child.wait()


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (kernel < 5.3): poll /proc instead
        return None


def run(owner_pid: int, owner_start: int, records_dir: str, role: str, command: list[str]) -> int:
    # Ctrl-C in the owner's terminal reaches this process (it is in the owner's
    # process group): the owner decides what an interrupt means, not the helpers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    owner_fd = _pidfd(owner_pid)
    if not is_same_process(owner_pid, owner_start):
        print(f"tether: owner {owner_pid} is gone; not starting {role}", file=sys.stderr)
        return OWNER_GONE

    tether_pid = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def prepare_child() -> None:  # runs in the child between fork and exec
        os.setpgid(0, 0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != tether_pid:  # the tether died before prctl took effect
            os._exit(OWNER_GONE)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    # preexec_fn is safe here: this process has one thread.
    child = subprocess.Popen(command, preexec_fn=prepare_child)
    record_path = os.path.join(records_dir, f"{tether_pid}.json")
    try:
        _write_record(
            record_path,
            {
                "role": role,
                "tether_pid": tether_pid,
                "tether_start": process_start_ticks(tether_pid),
                "pid": child.pid,
                "start": process_start_ticks(child.pid),
                "pgid": child.pid,
                "owner_pid": owner_pid,
                "owner_start": owner_start,
                "command": command,
            },
        )
    except OSError as err:  # the record is a fallback; the tether still does its job
        print(f"tether: cannot write {record_path}: {err}", file=sys.stderr)

    def forward(signum: int, _frame: object) -> None:
        _signal_group(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)

    child_fd = _pidfd(child.pid)
    watched = [fd for fd in (owner_fd, child_fd) if fd is not None]
    try:
        while child.poll() is None:
            if not is_same_process(owner_pid, owner_start):
                _stop_group(child, GRACE_SECONDS)
                break
            if watched:
                select.select(watched, [], [], 1.0)
            else:
                time.sleep(0.2)
        # Members of the helper's group that outlived it (workers of a pool that died).
        if group_exists(child.pid):
            _stop_group(child, GRACE_SECONDS)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(record_path)
    code = child.wait()
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run COMMAND tied to the owner's life")
    parser.add_argument("--owner", required=True, help="PID:START of the owning process")
    parser.add_argument("--records", required=True, help="folder for the process record")
    parser.add_argument("--role", default="helper", help="name in logs and the record")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no COMMAND given")
    owner_pid, _, owner_start = args.owner.partition(":")
    return run(int(owner_pid), int(owner_start), args.records, args.role, command)


if __name__ == "__main__":
    sys.exit(main())
