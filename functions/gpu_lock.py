"""GPU assignment on one node by an ``fcntl`` lock on a node-local state file.

Several Globus Compute workers on one node (Polaris: four per node) each
reconstruct a view. Before touching a GPU a task takes an exclusive
``fcntl.flock`` on a small JSON file (default ``/dev/shm/availgpus``), reads
which GPUs are free, records its PID (and the process start time, so a reused
PID is not mistaken for the claimant) against the GPUs it takes, writes the
file back and drops the lock. Releasing works the same way. Claims held by
processes that died (a worker killed by the scheduler, a SIGKILL) are reclaimed
by the next claimant.

State file, JSON object keyed by the GPU id as a string::

    {"0": {"pid": 4242, "start": 918273}, "1": null, "2": null, "3": null}

``start`` is field 22 of ``/proc/<pid>/stat`` (clock ticks since boot), or null
where ``/proc`` is not available. The file is node-local on purpose: ``flock`` on
network file systems is not reliable, and GPUs belong to one node.

The GPU ids are the entries of ``CUDA_VISIBLE_DEVICES`` when it is set (physical
ids, possibly one per worker when Parsl pins workers to accelerators), else
``0 .. gpu_count()-1``. Keys of GPUs this process cannot see are kept as they
are, so workers with different visible sets share one file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Sequence

from recon.errors import DeviceError, PtychoflowError

log = logging.getLogger(__name__)

#: State file used when neither the argument nor ``PTYCHOFLOW_GPU_LOCK`` names one.
DEFAULT_STATE_PATH = "/dev/shm/availgpus"
#: Environment variable naming the state file.
STATE_PATH_ENV = "PTYCHOFLOW_GPU_LOCK"

#: A GPU id: an int for numeric ``CUDA_VISIBLE_DEVICES`` entries, else the string
#: (``GPU-<uuid>``, ``MIG-<uuid>``).
GpuId = int | str


class GpuUnavailableError(PtychoflowError, TimeoutError):
    """Not enough GPUs became free on this node before the timeout."""


def visible_gpus() -> list[GpuId]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` or the CuPy device count.

    An empty ``CUDA_VISIBLE_DEVICES`` means no GPU (CUDA's own rule).
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [_parse_gpu_id(token) for token in env.split(",") if token.strip()]
    from recon.backend import gpu_count

    return list(range(gpu_count()))


def _parse_gpu_id(token: str) -> GpuId:
    token = token.strip()
    return int(token) if token.isdigit() else token


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) from ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22).

    None when ``/proc`` is not available or the process does not exist.
    """
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def claim_is_alive(claim: dict) -> bool:
    """Whether the process recorded in ``claim`` ({"pid", "start"}) still runs.

    A zombie (exited, not yet reaped by its parent) counts as dead: its GPU
    contexts are gone. A PID whose start time differs from the recorded one was
    reused by a newer process and counts as dead too.
    """
    pid = claim.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    stat = _proc_stat(pid)
    if stat is not None:
        state, started = stat
        if state == "Z":
            return False
        recorded = claim.get("start")
        if recorded is not None and started != recorded:
            return False
    return True


class GpuPool:
    """The GPUs of one node, shared between processes through a locked state file.

    Parameters
    ----------
    path
        State file; default ``$PTYCHOFLOW_GPU_LOCK`` or ``/dev/shm/availgpus``.
        It must be on a node-local file system.
    gpus
        The GPU ids this process may claim; default :func:`visible_gpus`.
    """

    def __init__(self, path: str | os.PathLike | None = None, gpus: Sequence[GpuId] | None = None):
        self.path = os.fspath(path or os.environ.get(STATE_PATH_ENV) or DEFAULT_STATE_PATH)
        self.gpus: list[GpuId] = list(visible_gpus() if gpus is None else gpus)
        if len(set(map(str, self.gpus))) != len(self.gpus):
            raise DeviceError(f"GPU list {self.gpus} holds the same GPU twice")
        self.pid = os.getpid()
        self.host = socket.gethostname()

    def __repr__(self) -> str:
        return f"GpuPool(path={self.path!r}, gpus={self.gpus!r})"

    # -- public API ------------------------------------------------------------

    def claim(self, n: int, timeout: float = 600.0, poll: float = 0.05) -> list[GpuId]:
        """Claim ``n`` free GPUs for this process, waiting up to ``timeout`` seconds.

        Returns the claimed GPU ids (in the order of :attr:`gpus`). Raises
        :class:`~recon.errors.DeviceError` at once when the node has fewer than
        ``n`` GPUs, and :class:`GpuUnavailableError` when they stay busy.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DeviceError(f"number of GPUs to claim must be an integer >= 1, got {n!r}")
        if n > len(self.gpus):
            raise DeviceError(
                f"{n} GPUs asked for, but {self.host} has {len(self.gpus)} visible to this "
                f"process ({self._gpu_source()})"
            )
        deadline = time.monotonic() + timeout
        start = process_start_time(self.pid)
        while True:
            with self._locked_state() as state:
                free = [gpu for gpu in self.gpus if state.get(str(gpu)) is None]
                if len(free) >= n:
                    taken = free[:n]
                    for gpu in taken:
                        state[str(gpu)] = {"pid": self.pid, "start": start}
                    log.debug("pid %d claimed GPUs %s", self.pid, taken)
                    return taken
                holders = sorted(
                    {state[str(g)]["pid"] for g in self.gpus if state.get(str(g)) is not None}
                )
            if time.monotonic() >= deadline:
                raise GpuUnavailableError(
                    f"no {n} GPUs free on {self.host} after {timeout:g} s "
                    f"({len(free)} of {len(self.gpus)} free); held by PIDs "
                    f"{', '.join(map(str, holders))} (state file {self.path})"
                )
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def release(self, ids: Sequence[GpuId]) -> None:
        """Free the given GPUs; only those this process holds are freed."""
        with self._locked_state() as state:
            for gpu in ids:
                claim = state.get(str(gpu))
                if claim is not None and claim.get("pid") == self.pid:
                    state[str(gpu)] = None
                elif claim is not None:
                    log.warning(
                        "GPU %s is held by pid %s, not by this process (%d); not released",
                        gpu, claim.get("pid"), self.pid,
                    )  # fmt: skip

    @contextlib.contextmanager
    def claimed(self, n: int, timeout: float = 600.0, poll: float = 0.05) -> Iterator[list[GpuId]]:
        """``with pool.claimed(2) as ids:`` claims on entry and releases on exit."""
        ids = self.claim(n, timeout=timeout, poll=poll)
        try:
            yield ids
        finally:
            self.release(ids)

    def holders(self) -> dict[str, int | None]:
        """A snapshot {gpu id: holder PID or None} of the GPUs this process can see."""
        with self._locked_state() as state:
            return {
                str(g): (None if state.get(str(g)) is None else state[str(g)]["pid"])
                for g in self.gpus
            }

    def device_ordinals(self, ids: Sequence[GpuId]) -> list[int]:
        """CUDA device ordinals (0-based, within ``CUDA_VISIBLE_DEVICES``) of GPU ids.

        CuPy numbers devices by their position in the visible list: with
        ``CUDA_VISIBLE_DEVICES=2,3`` GPU 3 is CuPy device 1.
        """
        keys = [str(g) for g in self.gpus]
        return [keys.index(str(g)) for g in ids]

    # -- state file ------------------------------------------------------------

    def _gpu_source(self) -> str:
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"CUDA_VISIBLE_DEVICES={env!r}" if env is not None else "CuPy device count"

    @contextlib.contextmanager
    def _locked_state(self) -> Iterator[dict]:
        """Hold the exclusive lock; yield the cleaned state; write it back on success."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise DeviceError(
                f"cannot open the GPU lock file {self.path}: {err.strerror}; set "
                f"{STATE_PATH_ENV} to a node-local path this user can write"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            original = _read_all(fd)
            state = self._clean(original)
            yield state
            text = json.dumps(state, sort_keys=True).encode()
            if text != original:
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                _write_all(fd, text)
                os.fsync(fd)
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def _clean(self, raw: bytes) -> dict:
        """Parse the state, rebuilding it when missing or corrupt; drop dead claims."""
        state: dict = {}
        if raw.strip():
            try:
                parsed = json.loads(raw)
                if not isinstance(parsed, dict):
                    raise ValueError("not a JSON object")
                state = parsed
            except ValueError as err:  # JSONDecodeError and UnicodeDecodeError included
                log.warning("GPU lock file %s is corrupt (%s); rebuilding it", self.path, err)
                state = {}
        for key, claim in list(state.items()):
            if claim is None:
                continue
            if not isinstance(claim, dict) or not claim_is_alive(claim):
                if isinstance(claim, dict):
                    log.info("reclaiming GPU %s from dead pid %s", key, claim.get("pid"))
                state[key] = None
        for gpu in self.gpus:
            state.setdefault(str(gpu), None)
        return state


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError as err:
            if err.errno == errno.EINTR:
                continue
            raise
        view = view[written:]


#: Views with fewer positions than this run on one GPU (see :func:`choose_gpu_count`).
LARGE_VIEW_POSITIONS = 1000
#: ...and so do views whose frames have fewer pixels than this (128 x 128).
LARGE_VIEW_FRAME_PIXELS = 128 * 128
#: Diffraction pixels (positions x frame pixels) one GPU gets when a view is split:
#: 500 frames of 128 x 128, about 33 MB of complex64 far field per work copy.
PIXELS_PER_GPU = 500 * 128 * 128
#: The most GPUs chosen automatically for one view (one Polaris node).
MAX_AUTO_GPUS = 4


def choose_gpu_count(
    n_positions: int,
    detector_shape: tuple[int, int],
    available: int,
    requested: int | None = None,
) -> int:
    """How many GPUs (or CPU partitions) one view should be split over.

    ``requested`` (``ReconOptions.devices``) wins; asking for more than
    ``available`` is a :class:`~recon.errors.DeviceError`. Otherwise:

    - Small views, fewer than ``LARGE_VIEW_POSITIONS`` (1000) positions or frames
      smaller than 128 x 128, run on one GPU. Each iteration of the multi-device
      model gathers partial gradients on one device, scatters the direction and
      sums line-search scalars; for a small view these transfers and the halo
      overlap between tiles cost more than the FFTs saved, so one GPU is
      fastest (the paper measured this).
    - Larger views get one GPU per ``PIXELS_PER_GPU`` (500 frames of 128 x 128)
      of diffraction data, rounded up, between 2 and ``MAX_AUTO_GPUS`` (4, a
      Polaris node) and never more than ``available``: enough work per GPU to
      hide the per-iteration communication, and memory per GPU stays bounded.
    """
    if available < 1:
        raise DeviceError("no GPU is available on this node")
    if requested is not None:
        if requested > available:
            raise DeviceError(
                f"option devices={requested} asks for more GPUs than the {available} "
                "available on this node"
            )
        return requested
    det_h, det_w = detector_shape
    frame_pixels = int(det_h) * int(det_w)
    if n_positions < LARGE_VIEW_POSITIONS or frame_pixels < LARGE_VIEW_FRAME_PIXELS:
        return 1
    wanted = math.ceil(n_positions * frame_pixels / PIXELS_PER_GPU)
    return max(1, min(max(2, wanted), MAX_AUTO_GPUS, available))
