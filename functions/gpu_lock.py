"""GPU assignment on one node by an ``fcntl`` lock on a node-local state file.

Several Globus Compute workers on one node (Polaris: four per node) each
reconstruct a view. Before touching a GPU a task takes an exclusive
``fcntl.flock`` on a small JSON file (default ``/dev/shm/ptychoflow-<uid>/availgpus``), reads
which GPUs are free, records its PID (and the process start time, so a reused
PID is not mistaken for the claimant) against the GPUs it takes, writes the
file back and drops the lock. Releasing works the same way. Claims held by
processes that died (a worker killed by the scheduler, a SIGKILL) are reclaimed
by the next claimant.

State file, a JSON object that starts with its format name, claims keyed by the GPU id
as a string::

    {"format": "ptychoflow-gpu-lock/1", "gpus": {"0": {"pid": 4242, "start": 918273,
     "uid": 1000}, "1": null, "2": null, "3": null}}

``start`` is field 22 of ``/proc/<pid>/stat`` (clock ticks since boot), or null
where ``/proc`` is not available; ``uid`` the claimant's user id. The file is
node-local on purpose: ``flock`` on network file systems is not reliable, and GPUs
belong to one node.

Its folder must be one no other account can write: the default is a per-user folder
created 0700 (``/dev/shm/ptychoflow-<uid>``), because any user who pre-created a fixed
name in ``/dev/shm`` would block every GPU task on the node. A folder that is a link,
belongs to another user (not root), or that others (or, unless group-shared, the group)
can write is refused; an existing folder is never chmodded. The file itself is still
handled as untrusted:

- opened with ``O_NOFOLLOW`` (a symbolic link planted there is refused, never followed)
  and ``O_CLOEXEC``; created ``0600``, or ``0660`` when shared with the group on purpose
  (``group_shared=True`` or ``PTYCHOFLOW_GPU_LOCK_GROUP_SHARED=1``);
- refused unless it is a regular file with one link, owned by this user (or, group-shared,
  by the group), and not writable by others;
- its content is read up to :data:`MAX_STATE_BYTES`. Empty content, content in this
  format (it starts with ``{"format": "ptychoflow-gpu-lock``) and the previous format
  (a JSON object keyed by GPU ids) are ours: malformed parts of them (a huge pid, deep
  nesting, a wrong type, truncation) are garbage and are rebuilt. Anything else is not a
  ptychoflow lock file and is refused untouched: an unrelated file named by mistake in
  ``PTYCHOFLOW_GPU_LOCK`` is never destroyed;
- a claim holds a GPU only while its process is verifiably the claimant: it exists and
  is not a zombie, its start time equals the recorded one (a claim without a start time
  is not verifiable where ``/proc`` exists), it runs as the recorded user, and its
  ``/proc/<pid>/cmdline`` is that of a ptychoflow process (a Python interpreter, or a
  command naming ``ptychoflow`` or ``globus-compute``). A claim naming any other process
  is reclaimed at once instead of blocking the GPU for the whole wait.

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
import re
import socket
import stat
import time
from collections.abc import Iterator, Sequence
from typing import Any

from recon.errors import DeviceError, PtychoflowError

log = logging.getLogger(__name__)

#: Folder of the state file used when neither the argument nor ``PTYCHOFLOW_GPU_LOCK``
#: names one: per user (``{uid}``), created 0700 by its first claimant.
DEFAULT_STATE_FOLDER = "/dev/shm/ptychoflow-{uid}"
#: File name of the default state file inside :data:`DEFAULT_STATE_FOLDER`.
DEFAULT_STATE_NAME = "availgpus"
#: Environment variable naming the state file.
STATE_PATH_ENV = "PTYCHOFLOW_GPU_LOCK"
#: Environment variable that makes a newly created state file group-shared (0660): "1".
GROUP_SHARED_ENV = "PTYCHOFLOW_GPU_LOCK_GROUP_SHARED"
#: The format name written first in every state file: how our files are recognised.
STATE_FORMAT = "ptychoflow-gpu-lock/1"
#: The bytes every state file of this format starts with.
STATE_MAGIC = b'{"format": "ptychoflow-gpu-lock'
#: The previous format: a JSON object whose first key is a GPU id (or an empty object).
LEGACY_START = re.compile(rb'\s*\{\s*(\}|"([0-9]{1,6}|GPU-[^"]{1,80}|MIG-[^"]{1,80})"\s*:)')
#: Most bytes read from the state file; a few hundred are normal.
MAX_STATE_BYTES = 64 * 1024
#: Most GPU entries kept; more is garbage.
MAX_GPU_ENTRIES = 1024
#: Longest GPU id accepted (``MIG-<uuid>`` ids are about 40 characters).
MAX_GPU_ID_LENGTH = 128
#: Largest PID Linux can hand out (``/proc/sys/kernel/pid_max`` is at most 2**22).
PID_MAX = 2**22
#: Words in a claimant's command line that mark a ptychoflow process.
CLAIMANT_COMMAND_WORDS = ("ptychoflow", "globus-compute", "process_worker_pool")

#: A GPU id: an int for numeric ``CUDA_VISIBLE_DEVICES`` entries, else the string
#: (``GPU-<uuid>``, ``MIG-<uuid>``).
GpuId = int | str


class GpuUnavailableError(PtychoflowError, TimeoutError):
    """Not enough GPUs became free on this node before the timeout."""


def default_state_path(uid: int | None = None) -> str:
    """``/dev/shm/ptychoflow-<uid>/availgpus``: the lock file when none is configured.

    A per-user folder, not a name in ``/dev/shm`` itself: the folder is created 0700 by
    this account, so no other account can plant, replace or hold the file in it. A
    folder of that name made by someone else is refused (:meth:`GpuPool._check_folder`).
    """
    folder = DEFAULT_STATE_FOLDER.format(uid=os.geteuid() if uid is None else uid)
    return os.path.join(folder, DEFAULT_STATE_NAME)


def configured_state_path() -> str:
    """``$PTYCHOFLOW_GPU_LOCK``, else :func:`default_state_path`."""
    return os.environ.get(STATE_PATH_ENV) or default_state_path()


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


def valid_claim(claim: Any) -> bool:
    """Whether ``claim`` has exactly the shape this module writes: ``{"pid": 1..PID_MAX,
    "start": int >= 0 or null, "uid": int >= 0 (optional)}``."""
    if not isinstance(claim, dict) or not {"pid", "start"} <= set(claim) <= {
        "pid", "start", "uid",
    }:  # fmt: skip
        return False
    pid, start, uid = claim["pid"], claim["start"], claim.get("uid", 0)
    return (
        type(pid) is int
        and 1 <= pid <= PID_MAX
        and (start is None or (type(start) is int and 0 <= start < 2**63))
        and type(uid) is int
        and 0 <= uid < 2**32
    )


def _proc_available() -> bool:
    return os.path.isdir("/proc/self")


def _command_line(pid: int) -> list[str] | None:
    """The arguments of ``pid`` from ``/proc/<pid>/cmdline``; None when unreadable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read(MAX_STATE_BYTES)
    except OSError:
        return None
    return [arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg]


def is_ptychoflow_process(pid: int) -> bool:
    """Whether ``pid``'s command line is a ptychoflow claimant's: a Python interpreter
    (the CLI, a Globus Compute worker) or a command naming ptychoflow or globus-compute.

    Kernel threads (empty command line) are not. Where the command line cannot be read
    (another user's process under ``hidepid``) the start-time check has to do.
    """
    args = _command_line(pid)
    if args is None:
        return True
    if not args:
        return False
    if os.path.basename(args[0]).startswith("python"):
        return True
    return any(word in arg for arg in args for word in CLAIMANT_COMMAND_WORDS)


def claim_is_alive(claim: Any) -> bool:
    """Whether the process recorded in ``claim`` ({"pid", "start", "uid"}) is still the
    claimant: see the module docstring. Malformed claims are dead."""
    if not valid_claim(claim):
        return False
    pid = claim["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if not _proc_available():
        return True
    stat_fields = _proc_stat(pid)
    if stat_fields is None:
        return False
    state, started = stat_fields
    if state == "Z":  # exited, not reaped: its GPU contexts are gone
        return False
    if claim["start"] is None or started != claim["start"]:
        return False  # unverifiable, or the PID was reused by a newer process
    if "uid" in claim:
        try:
            if os.stat(f"/proc/{pid}").st_uid != claim["uid"]:
                return False
        except OSError:
            return False
    return is_ptychoflow_process(pid)


class GpuPool:
    """The GPUs of one node, shared between processes through a locked state file.

    Parameters
    ----------
    path
        State file; default ``$PTYCHOFLOW_GPU_LOCK`` or ``/dev/shm/ptychoflow-<uid>/availgpus``.
        It must be on a node-local file system.
    gpus
        The GPU ids this process may claim; default :func:`visible_gpus`.
    group_shared
        Share the file with the group on purpose: create it 0660 and accept it when
        another member of its group owns it. Default ``$PTYCHOFLOW_GPU_LOCK_GROUP_SHARED``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        gpus: Sequence[GpuId] | None = None,
        *,
        group_shared: bool | None = None,
    ):
        self.path = os.fspath(path or configured_state_path())
        if group_shared is None:
            group_shared = os.environ.get(GROUP_SHARED_ENV, "").lower() in ("1", "true", "yes")
        #: Create the file 0660 and accept one owned by another member of its group.
        self.group_shared = group_shared
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
                        state[str(gpu)] = {"pid": self.pid, "start": start, "uid": os.geteuid()}
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

    def _refuse(self, problem: str) -> DeviceError:
        return DeviceError(
            f"GPU lock file {self.path}: {problem}; set {STATE_PATH_ENV} to a path in a "
            "node-local folder only this account can write (unset it for the default, "
            f"{default_state_path()})"
        )

    def _check_folder(self) -> None:
        """The state file's folder: created 0700 when it is the default and missing;
        refused when it is a link, or not owned by this user or root, or writable by
        others (by the group too, unless the file is group-shared on purpose). A folder
        that exists is never chmodded: it may not be ours to change."""
        folder = os.path.dirname(os.path.abspath(self.path))
        if self.path == default_state_path():
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o770 if self.group_shared else 0o700)
        try:
            info = os.lstat(folder)
        except OSError as err:
            raise DeviceError(
                f"cannot use the folder {folder} of the GPU lock file {self.path}: "
                f"{err.strerror}; set {STATE_PATH_ENV} to a path in a node-local folder "
                "this user owns"
            ) from err
        if not stat.S_ISDIR(info.st_mode):
            raise self._refuse(f"its folder {folder} is not a folder (a link, or a file)")
        if info.st_uid not in (os.geteuid(), 0):
            raise self._refuse(
                f"its folder {folder} belongs to uid {info.st_uid}, not to this user "
                f"({os.geteuid()}); someone else may have made it to block this node's GPUs"
            )
        writable_by_others = 0o002 | (0 if self.group_shared else 0o020)
        if info.st_mode & writable_by_others:
            raise self._refuse(
                f"its folder {folder} is writable by other users (mode "
                f"{stat.S_IMODE(info.st_mode):04o}), who could plant or remove the lock "
                "file there"
            )

    def _open_state(self) -> int:
        """Open (or create) the state file without following links; check it is ours."""
        self._check_folder()
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        mode = 0o660 if self.group_shared else 0o600
        try:
            try:
                fd = os.open(self.path, flags)
            except FileNotFoundError:
                try:
                    fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, mode)
                except FileExistsError:  # another claimant created it just now
                    fd = os.open(self.path, flags)
                else:
                    os.fchmod(fd, mode)  # exactly, whatever the umask
                    return fd
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise self._refuse(
                    "is a symbolic link; refusing to follow it (someone may have planted it "
                    "in a shared folder)"
                ) from err
            raise DeviceError(
                f"cannot open the GPU lock file {self.path}: {err.strerror}; set "
                f"{STATE_PATH_ENV} to a node-local path this user can write"
            ) from err
        try:
            self._check_ownership(os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_ownership(self, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise self._refuse("is not a regular file")
        if info.st_nlink != 1:
            raise self._refuse(f"has {info.st_nlink} hard links; a lock file has one")
        ours = info.st_uid == os.geteuid()
        shared = self.group_shared and info.st_gid in {os.getegid(), *os.getgroups()}
        if not (ours or shared):
            raise self._refuse(
                f"belongs to uid {info.st_uid}, not to this user ({os.geteuid()})"
                + ("" if self.group_shared else f" (set {GROUP_SHARED_ENV}=1 to share it)")
            )
        writable_by_others = 0o002 | (0 if self.group_shared else 0o020)
        if info.st_mode & writable_by_others:
            raise self._refuse(
                f"is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"chmod {'660' if self.group_shared else '600'} it"
            )

    @contextlib.contextmanager
    def _locked_state(self) -> Iterator[dict[str, Any]]:
        """Hold the exclusive lock; yield the cleaned state; write it back on success."""
        fd = self._open_state()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            original = _read_bounded(fd, MAX_STATE_BYTES + 1)
            state = self._clean(original)
            yield state
            text = json.dumps({"format": STATE_FORMAT, "gpus": state}).encode()
            if text != original:
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                _write_all(fd, text)
                os.fsync(fd)
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def _parse(self, raw: bytes) -> dict[str, Any]:
        """The claims in ``raw`` ({gpu id: claim or None}); {} for empty or malformed
        content of our format; a refusal for content that is not a ptychoflow lock file."""
        if not raw.strip():
            return {}
        ours = raw.startswith(STATE_MAGIC)
        if not ours and LEGACY_START.match(raw) is None:
            raise self._refuse(
                "exists and is not a ptychoflow GPU lock file (it does not start with "
                f"{STATE_MAGIC.decode()!r}); refusing to overwrite it"
            )
        if len(raw) > MAX_STATE_BYTES:
            log.warning("GPU lock file %s is over %d bytes; rebuilding it", self.path, len(raw))
            return {}
        try:
            parsed = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as err:  # JSON and UTF-8 errors, deep nesting
            log.warning("GPU lock file %s is corrupt (%s); rebuilding it", self.path, err)
            return {}
        if ours:
            valid = (
                isinstance(parsed, dict)
                and set(parsed) == {"format", "gpus"}
                and parsed["format"] == STATE_FORMAT
                and isinstance(parsed["gpus"], dict)
            )
            if not valid:
                log.warning("GPU lock file %s has an unknown layout; rebuilding it", self.path)
                return {}
            parsed = parsed["gpus"]
        if not isinstance(parsed, dict) or len(parsed) > MAX_GPU_ENTRIES:
            log.warning("GPU lock file %s holds no valid claim table; rebuilding it", self.path)
            return {}
        return parsed

    def _clean(self, raw: bytes) -> dict[str, Any]:
        """Parse the state, rebuilding what is missing or malformed; drop dead claims."""
        state: dict[str, Any] = {}
        for key, claim in self._parse(raw).items():
            if not (0 < len(key) <= MAX_GPU_ID_LENGTH and key.isprintable()):
                log.warning("GPU lock file %s: dropping malformed GPU id %.40r", self.path, key)
                continue
            if claim is not None and not claim_is_alive(claim):
                if valid_claim(claim):
                    log.info("reclaiming GPU %s from pid %s (not running)", key, claim["pid"])
                else:
                    log.warning("GPU lock file %s: malformed claim on GPU %s freed", self.path, key)
                claim = None
            state[key] = claim
        for gpu in self.gpus:
            state.setdefault(str(gpu), None)
        return state


def _read_bounded(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes from the start of ``fd``."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    remaining = limit
    while remaining > 0 and (chunk := os.read(fd, min(65536, remaining))):
        chunks.append(chunk)
        remaining -= len(chunk)
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
