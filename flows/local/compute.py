"""A real Globus Compute engine in this process, with no cloud connection.

The local backend runs the flow's compute state here. The engine is built the
way a globus-compute-endpoint 4.x user endpoint builds its own: from an endpoint
folder (default ``endpoint_config/local``: a manager ``config.yaml``, the engine
template ``user_config_template.yaml.j2`` and its ``user_config_schema.json``)
rendered by the endpoint package's own ``render_config_user_template`` and
loaded by its ``load_config_yaml``: a ``GlobusComputeEngine`` (Parsl
HighThroughputExecutor) on a ``LocalProvider``. The template receives
``allowed_roots``, which it exports to the workers as
``PTYCHOFLOW_ALLOWED_ROOTS``.

Each call is packed exactly as the Globus Compute service hands it to an
endpoint: function, args and kwargs serialized by the SDK's
``ComputeSerializer``, wrapped in a ``globus_compute_common`` messagepack
``Task``. The worker runs the endpoint's ``execute_task`` and returns a packed
``Result``, unpacked here into the function's return value or into a
:class:`ComputeTaskError` that carries the remote error message.

What this module adds around the engine, because it runs inside a long-lived
service on a shared machine:

- **Authenticated sockets.** An engine whose config turns CurveZMQ off
  (``encrypted: false``) is refused: its loopback ports would let any local
  account have a pickle run as this user.
- **No process outlives its owner.** The interchange and each worker pool are
  started through :mod:`flows.local.tether`: own process group, parent-death
  signal, and a watch on this process that stops them when it exits, however it
  exits (SIGKILL included).
- **Stale engines are reaped at start-up.** Each engine runs in its own folder
  ``<engines dir>/<owner pid>-<owner start time>-<random>/``; its helpers are
  recorded under ``helpers/``. :meth:`LocalComputeEngine.start` kills the
  processes of folders whose owner is gone and removes those folders.
- **Stray results are dropped.** A result for an executor task id this engine
  did not submit is logged and ignored, instead of killing Parsl's result thread.

Usage::

    with LocalComputeEngine(run_dir=tmp, allowed_roots=[compute_root]) as engine:
        summary = engine.submit(reconstruct_view, "in/view000.cxi", "out").result()
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.resources
import json
import logging
import os
import pathlib
import pwd
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flows.errors import ConfigError
from flows.local import tether
from flows.local.errors import ComputeTaskError

log = logging.getLogger(__name__)

#: Where the ``functions``/``recon`` packages live: workers must import the same code.
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
#: The engine template of a globus-compute-endpoint 4.x endpoint folder.
TEMPLATE_NAME = "user_config_template.yaml.j2"
#: Name of an engine's own folder: ``<owner pid>-<owner start ticks>-<8 hex digits>``.
ENGINE_FOLDER = re.compile(r"^(\d+)-(\d+)-[0-9a-f]{8}$")
#: Seconds stale engine processes get between SIGTERM and SIGKILL.
STALE_GRACE_SECONDS = 3.0


def default_config_path() -> pathlib.Path:
    """The ``endpoint_config/local`` endpoint folder of the installed package."""
    return pathlib.Path(str(importlib.resources.files("flows.endpoint_config") / "local"))


def endpoint_folder(config_path: str | os.PathLike[str]) -> pathlib.Path:
    """The endpoint folder ``config_path`` names: the folder itself, or the folder of its
    ``config.yaml`` or ``user_config_template.yaml.j2``.

    Raises :class:`ConfigError` when it is not a 4.x endpoint folder (manager
    ``config.yaml`` plus ``user_config_template.yaml.j2``)."""
    path = pathlib.Path(config_path)
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise ConfigError(f"{path}: endpoint config not found")
    if not (folder / TEMPLATE_NAME).is_file():
        raise ConfigError(
            f"{path}: not a Globus Compute endpoint folder: {folder} has no {TEMPLATE_NAME}. "
            "globus-compute-endpoint 4.x keeps the engine in that template beside a manager "
            "config.yaml; copy endpoint_config/local and edit it"
        )
    return folder


def render_engine_config(
    folder: str | os.PathLike[str], user_options: dict[str, Any] | None = None
) -> str:
    """The user endpoint configuration (YAML text) that ``globus-compute-endpoint``
    renders from ``folder`` for this account, given ``user_options`` (the
    ``user_endpoint_config`` of a task): the endpoint package's own loaders,
    schema check and sandboxed renderer, in the order its manager uses them."""
    import jinja2
    import jsonschema
    from click import ClickException
    from globus_compute_endpoint.endpoint.config.config import CoreEndpointConfig
    from globus_compute_endpoint.endpoint.config.utils import (
        get_config,
        load_user_config_schema,
        load_user_config_template,
        render_config_user_template,
    )
    from globus_compute_endpoint.endpoint.endpoint import Endpoint
    from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity

    folder = pathlib.Path(folder)
    manager_yaml = folder / "config.yaml"
    try:
        manager = get_config(folder)
    except ClickException as err:
        raise ConfigError(
            f"{manager_yaml}: invalid endpoint manager config: {err.message}"
        ) from err
    if not isinstance(manager, CoreEndpointConfig):
        raise ConfigError(
            f"{manager_yaml}: holds an `engine` block, which globus-compute-endpoint 4.x "
            f"refuses: move it to {TEMPLATE_NAME}"
        )
    template_path = Endpoint.user_config_template_path(folder, manager)
    schema_path = Endpoint.user_config_schema_path(folder, manager)
    try:
        template = load_user_config_template(template_path)
        schema = load_user_config_schema(schema_path)
    except OSError as err:
        raise ConfigError(f"{err.filename}: cannot read: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"{schema_path}: not valid JSON: {err}") from err
    identity = MappedPosixIdentity(pwd.getpwuid(os.getuid()), [], None)
    try:
        rendered = render_config_user_template(
            manager, template, template_path, identity, schema, user_options or {}, {}
        )
    except jsonschema.ValidationError as err:
        where = "/".join(str(part) for part in err.absolute_path) or "(options)"
        raise ConfigError(f"{schema_path}: option {where}: {err.message}") from err
    except jsonschema.SchemaError as err:
        raise ConfigError(f"{schema_path}: not a valid JSON schema: {err.message}") from err
    except jinja2.TemplateError as err:
        raise ConfigError(f"{template_path}: cannot render: {err}") from err
    except ValueError as err:  # a reserved variable name among the options
        raise ConfigError(f"{template_path}: {err}") from err
    return str(rendered)


def load_engine(
    config_path: str | os.PathLike[str], user_options: dict[str, Any] | None = None
) -> Any:
    """The engine a user endpoint would build from the endpoint folder (not started)."""
    from click import ClickException
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    folder = endpoint_folder(config_path)
    text = render_engine_config(folder, user_options)
    try:
        config = load_config_yaml(text)
    except ClickException as err:
        raise ConfigError(
            f"{folder / TEMPLATE_NAME}: invalid endpoint config: {err.message}"
        ) from err
    engine = getattr(config, "engine", None)
    if engine is None:
        raise ConfigError(f"{folder / TEMPLATE_NAME}: renders no `engine` section")
    return engine


def _prepend_env_path(name: str, directory: str) -> None:
    parts = [p for p in os.environ.get(name, "").split(os.pathsep) if p]
    if directory not in parts:
        os.environ[name] = os.pathsep.join([directory, *parts])


def _descendants(pid: int) -> set[int]:
    """PIDs of all living descendants of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as children:
                    kids = [int(k) for k in children.read().split()]
            except OSError:
                continue
            for kid in kids:
                if kid not in found:
                    found.add(kid)
                    todo.append(kid)
    return found


def _is_running(pid: int) -> bool:
    return tether.process_start_ticks(pid) is not None


def _processes_mentioning(text: str) -> dict[int, int]:
    """This account's processes whose command line holds ``text``: pid -> start ticks."""
    found: dict[int, int] = {}
    needle = text.encode()
    uid = os.getuid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if needle not in cmdline.read():
                    continue
        except OSError:
            continue
        start = tether.process_start_ticks(int(entry))
        if start is not None:
            found[int(entry)] = start
    return found


def _private_folder(path: pathlib.Path) -> pathlib.Path:
    """Create ``path`` (mode 0700) or check that it is a real folder of this account that
    nobody else can write (never chmodded: :mod:`flows.private_folders`)."""
    from flows.private_folders import ensure_private_dir

    return ensure_private_dir(path, "the engines folder")


def _helper_records(engine_dir: pathlib.Path) -> list[dict[str, Any]]:
    """The process records the tethers of one engine wrote (unreadable ones skipped)."""
    records = []
    for path in sorted((engine_dir / "helpers").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _group_members(pgid: int, not_before: int) -> dict[int, int]:
    """This account's living processes in process group ``pgid`` that started at or after
    ``not_before`` ticks (the group leader's recorded start): pid -> start ticks. A
    group whose leader has exited lives on in its members (the worker pool that ``bash
    -c '... &'`` detached); the start time keeps a reused pgid from counting."""
    members: dict[int, int] = {}
    uid = os.getuid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                fields = stat_file.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command: state, ppid, pgrp, ... starttime is field 22 (index 19).
        if len(fields) < 20 or fields[0] == b"Z" or int(fields[2]) != pgid:
            continue
        start = int(fields[19])
        if start >= not_before:
            members[int(entry)] = start
    return members


def _recorded_processes(records: Iterable[dict[str, Any]]) -> tuple[dict[int, int], set[int]]:
    """Living processes of the records (pid -> start ticks), the members of the process
    groups they started (by recorded start time, :func:`_group_members`), and the groups
    whose leader still runs."""
    alive: dict[int, int] = {}
    groups: set[int] = set()
    for record in records:
        for pid_key, start_key in (("tether_pid", "tether_start"), ("pid", "start")):
            pid, start = record.get(pid_key), record.get(start_key)
            if not isinstance(pid, int) or not isinstance(start, int):
                continue
            if tether.is_same_process(pid, start):
                alive[pid] = start
                if record.get("pgid") == pid and pid_key == "pid":
                    groups.add(pid)
        # The leader (``bash -c '... &'``) may have exited before its tether read its start
        # time: the tether's own start is then the bound (it started before its child).
        pgid = record.get("pgid")
        start = record.get("start")
        if not isinstance(start, int):
            start = record.get("tether_start")
        if isinstance(pgid, int) and isinstance(start, int):
            alive.update(_group_members(pgid, start))
    return alive, groups


def _stop_processes(processes: dict[int, int], groups: set[int], grace: float) -> None:
    """SIGTERM the processes and groups, SIGKILL whatever is left after ``grace`` seconds.
    A pid is signalled only while it is still the process that started at its ticks."""

    def send(signum: int) -> None:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signum)
        for pid, start in processes.items():
            if tether.is_same_process(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)

    send(signal.SIGTERM)
    send(signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not any(tether.is_same_process(p, s) for p, s in processes.items()) and not any(
            tether.group_exists(g) for g in groups
        ):
            return
        time.sleep(0.05)
    send(signal.SIGKILL)


def reap_stale_engines(engines_dir: pathlib.Path) -> int:
    """Kill the processes of engines in ``engines_dir`` whose owner is gone; remove
    their folders. Returns how many processes were still running."""
    if not engines_dir.is_dir():
        return 0
    reaped = 0
    for engine_dir in sorted(engines_dir.iterdir()):
        match = ENGINE_FOLDER.match(engine_dir.name)
        if not match or not engine_dir.is_dir() or engine_dir.is_symlink():
            continue
        owner_pid, owner_start = int(match.group(1)), int(match.group(2))
        if tether.is_same_process(owner_pid, owner_start):
            continue  # a live engine of this or another process (e.g. a watcher)
        alive, groups = _recorded_processes(_helper_records(engine_dir))
        # Helpers started with this engine's folder on their command line (the tethers,
        # the worker pool's log folder), should a record be missing.
        alive.update(_processes_mentioning(str(engine_dir)))
        if alive:
            log.warning(
                "stopping %d process(es) of a stale Compute engine in %s (its owner, pid %d, "
                "is gone): %s",
                len(alive),
                engine_dir,
                owner_pid,
                ", ".join(str(pid) for pid in sorted(alive)),
            )
            _stop_processes(alive, groups, STALE_GRACE_SECONDS)
            reaped += len(alive)
        shutil.rmtree(engine_dir, ignore_errors=True)
    return reaped


class _SubmittedTasks(dict[Any, Any]):
    """Parsl's executor task table; a result for a task id it does not hold (a stale
    engine's, a foreign one's) is logged and dropped instead of raising KeyError in
    Parsl's result thread, which would stop every later result."""

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self or default:
            return super().pop(key, *default)
        log.warning(
            "dropped a result for executor task %r, which this engine did not submit "
            "(from a stale or foreign engine)",
            key,
        )
        return concurrent.futures.Future()  # takes the stray result; nobody waits on it


def _tethered_launcher(inner: Any, prefix: str) -> Any:
    """A Parsl launcher that starts the worker pool command through ``prefix`` (the tether)."""
    from parsl.launchers.base import Launcher

    class TetheredLauncher(Launcher):
        def __init__(self, inner: Any, prefix: str) -> None:
            super().__init__(debug=getattr(inner, "debug", True))
            self.inner = inner
            self.prefix = prefix

        def __call__(self, command: str, *args: Any, **kwargs: Any) -> str:
            return str(self.inner(f"{self.prefix} {command}", *args, **kwargs))

    return TetheredLauncher(inner, prefix)


class LocalComputeEngine:
    """A started Globus Compute engine plus the packing an endpoint does.

    Parameters
    ----------
    config_path
        An endpoint folder (or its ``config.yaml``); default :func:`default_config_path`.
    run_dir
        The folder for this account's engines (default: ``ptychoflow-engines-<uid>``
        in the system's temporary folder). Each engine runs in a subfolder of its
        own (:attr:`engine_dir`), removed when the next engine starts after its
        owner is gone, or at :meth:`shutdown` under the default folder.
    allowed_roots
        Folders the compute function may read and write: rendered into the
        template's ``allowed_roots`` (the workers' ``PTYCHOFLOW_ALLOWED_ROOTS``).
        Default: the template's own default.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        allowed_roots: Iterable[str | os.PathLike[str]] | None = None,
    ) -> None:
        self.config_path = pathlib.Path(config_path or default_config_path())
        self._default_engines_dir = run_dir is None
        self.engines_dir = (
            pathlib.Path(run_dir)
            if run_dir is not None
            else pathlib.Path(tempfile.gettempdir()) / f"ptychoflow-engines-{os.getuid()}"
        )
        self.allowed_roots = (
            None
            if allowed_roots is None
            else [os.path.realpath(os.fspath(root)) for root in allowed_roots]
        )
        #: This engine's own folder (Parsl run dir, task working dirs, helper records).
        self.engine_dir: pathlib.Path | None = None
        self.endpoint_id = uuid.uuid4()
        self.engine: Any = None
        self._serializer: Any = None
        self._submit_lock = threading.Lock()
        #: Futures handed out and not resolved yet: failed at shutdown, not left hanging.
        self._pending: dict[uuid.UUID, concurrent.futures.Future[Any]] = {}
        self._pending_lock = threading.Lock()
        self._started = False
        self._before: set[int] = set()

    @property
    def run_dir(self) -> pathlib.Path | None:
        """The running engine's folder (same as :attr:`engine_dir`)."""
        return self.engine_dir

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> LocalComputeEngine:
        """Reap stale engines, build the engine from the config and start it
        (returns quickly; workers follow)."""
        if self._started:
            return self
        from globus_compute_sdk.serialize import ComputeSerializer

        user_options = {}
        if self.allowed_roots is not None:
            user_options["allowed_roots"] = os.pathsep.join(self.allowed_roots)
        engine = load_engine(self.config_path, user_options)
        try:
            self._check_transport(engine)
        except ConfigError:
            engine.shutdown()
            raise

        # The engine launches its interchange and workers by the command name
        # `globus-compute-endpoint`, and the workers must import this project's code
        # (the `functions` and `recon` packages) just like this process does.
        _prepend_env_path("PATH", os.path.dirname(sys.executable))
        _prepend_env_path("PYTHONPATH", str(PROJECT_ROOT))
        _private_folder(self.engines_dir)
        reap_stale_engines(self.engines_dir)
        owner_pid = os.getpid()
        owner_start = tether.process_start_ticks(owner_pid)
        self.engine_dir = self.engines_dir / f"{owner_pid}-{owner_start}-{uuid.uuid4().hex[:8]}"
        (self.engine_dir / "helpers").mkdir(mode=0o700, parents=True)
        self._tie_to_owner(engine, f"{owner_pid}:{owner_start}")

        self._before = _descendants(owner_pid)
        self.engine = engine
        self._serializer = ComputeSerializer()
        try:
            self.engine.start(endpoint_id=self.endpoint_id, run_dir=str(self.engine_dir))
        except Exception:
            self._shutdown_engine()
            raise
        self._started = True
        log.info("local compute engine %s started in %s", type(engine).__name__, self.engine_dir)
        return self

    def _check_transport(self, engine: Any) -> None:
        executor = getattr(engine, "executor", None)
        if executor is not None and getattr(executor, "encrypted", True) is False:
            raise ConfigError(
                f"{endpoint_folder(self.config_path) / TEMPLATE_NAME}: the engine has "
                "`encrypted: false`: any account on this machine could connect to its ports "
                "and run code as you. Set `encrypted: true`"
            )

    def _tie_to_owner(self, engine: Any, owner: str) -> None:
        """Start the engine's helper processes through the tether; guard its task table."""
        executor = getattr(engine, "executor", None)
        if executor is None or not hasattr(executor, "interchange_launch_cmd"):
            return  # not a Parsl HTEX engine: no helper processes of its own
        assert self.engine_dir is not None
        tether_cmd = [
            sys.executable,
            "-I",
            str(pathlib.Path(tether.__file__).resolve()),
            "--owner",
            owner,
            "--records",
            str(self.engine_dir / "helpers"),
            "--role",
        ]
        executor.interchange_launch_cmd = [
            *tether_cmd,
            "interchange",
            "--",
            *executor.interchange_launch_cmd,
        ]
        provider = executor.provider
        if type(provider).__name__ == "LocalProvider":  # workers on this machine
            prefix = " ".join(shlex.quote(part) for part in [*tether_cmd, "worker-pool", "--"])
            provider.launcher = _tethered_launcher(provider.launcher, prefix)
        executor._tasks = _SubmittedTasks(executor._tasks)

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop the engine and every process it started; safe to call twice."""
        if self.engine is None:
            return
        self._started = False
        self._shutdown_engine(timeout)
        if self._default_engines_dir and self.engine_dir is not None:
            shutil.rmtree(self.engine_dir, ignore_errors=True)
        # Tasks still running had their workers stopped: their callers learn it now.
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for task_id, future in pending.items():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(
                    ComputeTaskError(
                        "the local compute engine was shut down before the task finished",
                        task_id,
                    )
                )

    def _block_process_groups(self) -> set[int]:
        """Process groups of the provider's blocks (a LocalProvider detaches them)."""
        provider = getattr(getattr(self.engine, "executor", None), "provider", None)
        groups = set()
        for job in getattr(provider, "resources", {}).values():
            pid = job.get("remote_pid") if isinstance(job, dict) else None
            if isinstance(pid, int):
                with contextlib.suppress(OSError):
                    groups.add(os.getpgid(pid))
        groups.discard(os.getpgrp())
        return groups

    def _shutdown_engine(self, timeout: float = 15.0) -> None:
        started_here = {
            pid: tether.process_start_ticks(pid) or 0
            for pid in _descendants(os.getpid()) - self._before
        }
        groups = self._block_process_groups()
        engine, self.engine = self.engine, None
        try:
            if type(engine).__name__ == "ProcessPoolEngine":
                engine.shutdown(block=True)
            else:
                engine.shutdown()
        except Exception:
            log.exception("engine shutdown failed; killing its processes")
        # Parsl scales workers in with SIGTERM to their process group, and stops the
        # interchange with SIGTERM; the tethers pass both on. Wait for everything this
        # engine started (children, block groups, recorded helpers), then kill the rest.
        recorded, helper_groups = (
            _recorded_processes(_helper_records(self.engine_dir))
            if self.engine_dir is not None
            else ({}, set())
        )
        processes = {**started_here, **recorded}
        groups |= helper_groups
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            processes = {p: s for p, s in processes.items() if tether.is_same_process(p, s)}
            groups = {g for g in groups if tether.group_exists(g)}
            if not processes and not groups:
                return
            time.sleep(0.05)
        log.warning(
            "engine processes %s (groups %s) did not exit; killing them",
            sorted(processes),
            sorted(groups),
        )
        _stop_processes(processes, groups, grace=0.0)

    def __enter__(self) -> LocalComputeEngine:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # -- tasks -------------------------------------------------------------------

    def submit(
        self, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Run ``func(*args, **kwargs)`` on a worker; thread-safe.

        The future resolves with the function's return value, or raises
        :class:`ComputeTaskError` with the remote exception's type and message.
        """
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Task
        from globus_compute_endpoint.engines.base import GCFuture

        if not self._started or self.engine is None:
            raise RuntimeError("LocalComputeEngine is not started (use start() or `with`)")
        serializer = self._serializer
        task_id = uuid.uuid4()
        # The same three buffers the Globus Compute service delivers to an endpoint.
        buffer = serializer.pack_buffers(
            [serializer.serialize(func), serializer.serialize(args), serializer.serialize(kwargs)]
        )
        packed = messagepack.pack(Task(task_id=task_id, task_buffer=buffer))
        outer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        outer.set_running_or_notify_cancel()
        engine_future = GCFuture(gc_task_id=task_id)
        engine_future.add_done_callback(lambda f: self._resolve(f, outer, task_id))
        with self._pending_lock:
            self._pending[task_id] = outer
        with self._submit_lock:
            self.engine.submit(engine_future, packed, resource_specification={})
        return outer

    def _resolve(
        self, engine_future: Any, outer: concurrent.futures.Future[Any], task_id: uuid.UUID
    ) -> None:
        from globus_compute_common import messagepack

        with self._pending_lock:
            self._pending.pop(task_id, None)
        try:
            result: Any = messagepack.unpack(engine_future.result())
            if result.is_error:
                code = result.error_details.code if result.error_details else ""
                outer.set_exception(ComputeTaskError(result.data, task_id, code))
            else:
                outer.set_result(self._serializer.deserialize(result.data))
        except Exception as err:  # a failure of the engine itself, not of the task
            outer.set_exception(err)
