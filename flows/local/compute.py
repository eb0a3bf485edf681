"""A real Globus Compute engine in this process, with no cloud connection.

The local backend runs the flow's compute state here: the engine is built from
an endpoint ``config.yaml`` by the endpoint package's own loader (default
``endpoint_config/local/config.yaml``: a ``GlobusComputeEngine`` on a Parsl
``LocalProvider``), and each call is packed exactly as the Globus Compute
service hands it to an endpoint: function, args and kwargs serialized by the
SDK's ``ComputeSerializer``, wrapped in a ``globus_compute_common`` messagepack
``Task``. The worker runs the endpoint's ``execute_task`` and returns a packed
``Result``, which is unpacked here into the function's return value or into a
:class:`ComputeTaskError` that carries the remote error message.

Usage::

    with LocalComputeEngine(run_dir=tmp) as engine:
        summary = engine.submit(reconstruct_view, "in/view000.cxi", "out").result()
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.resources
import logging
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from flows.errors import ConfigError
from flows.local.errors import ComputeTaskError

log = logging.getLogger(__name__)

#: Where the ``functions``/``recon`` packages live: workers must import the same code.
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]


def default_config_path() -> pathlib.Path:
    """``endpoint_config/local/config.yaml`` of the installed package."""
    return pathlib.Path(
        str(importlib.resources.files("flows.endpoint_config") / "local" / "config.yaml")
    )


def load_engine(config_path: str | os.PathLike) -> Any:
    """The engine an endpoint would build from ``config_path`` (not started)."""
    from click import ClickException
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    path = pathlib.Path(config_path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read endpoint config: {err.strerror}") from err
    try:
        config = load_config_yaml(text)
    except ClickException as err:
        raise ConfigError(f"{path}: invalid endpoint config: {err.message}") from err
    engine = getattr(config, "engine", None)
    if engine is None:
        raise ConfigError(f"{path}: endpoint config has no 'engine' section")
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


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class LocalComputeEngine:
    """A started Globus Compute engine plus the packing an endpoint does.

    Parameters
    ----------
    config_path
        An endpoint ``config.yaml``; default :func:`default_config_path`.
    run_dir
        The endpoint run directory (engine logs, submit scripts, the tasks'
        working directory). Default: a temporary directory removed on shutdown.
    """

    def __init__(
        self,
        config_path: str | os.PathLike | None = None,
        run_dir: str | os.PathLike | None = None,
    ):
        self.config_path = pathlib.Path(config_path or default_config_path())
        self._own_run_dir = run_dir is None
        self.run_dir = pathlib.Path(run_dir) if run_dir else None
        self.endpoint_id = uuid.uuid4()
        self.engine: Any = None
        self._serializer: Any = None
        self._submit_lock = threading.Lock()
        self._started = False
        self._before: set[int] = set()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> LocalComputeEngine:
        """Build the engine from the config and start it (returns quickly; workers follow)."""
        if self._started:
            return self
        from globus_compute_sdk.serialize import ComputeSerializer

        # The engine launches its interchange and workers by the command name
        # `globus-compute-endpoint`, and the workers must import this project's code
        # (the `functions` and `recon` packages) just like this process does.
        _prepend_env_path("PATH", os.path.dirname(sys.executable))
        _prepend_env_path("PYTHONPATH", str(PROJECT_ROOT))
        if self.run_dir is None:
            self.run_dir = pathlib.Path(tempfile.mkdtemp(prefix="ptychoflow-compute-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._before = _descendants(os.getpid())
        self.engine = load_engine(self.config_path)
        self._serializer = ComputeSerializer()
        try:
            self.engine.start(endpoint_id=self.endpoint_id, run_dir=str(self.run_dir))
        except Exception:
            self._shutdown_engine()
            raise
        self._started = True
        log.info("local compute engine %s started in %s", type(self.engine).__name__, self.run_dir)
        return self

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop the engine and every process it started; safe to call twice."""
        if self.engine is None:
            return
        self._started = False
        self._shutdown_engine(timeout)
        if self._own_run_dir and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

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
        started_here = _descendants(os.getpid()) - self._before
        groups = self._block_process_groups()
        engine, self.engine = self.engine, None
        try:
            if type(engine).__name__ == "ProcessPoolEngine":
                engine.shutdown(block=True)
            else:
                engine.shutdown()
        except Exception:
            log.exception("engine shutdown failed; killing its processes")
        # Parsl scales workers in with SIGTERM to their process group; wait for them,
        # then kill what is left (only processes and groups this engine started).
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = {p for p in started_here if _is_running(p)}
            groups = {g for g in groups if _group_exists(g)}
            if not alive and not groups:
                return
            time.sleep(0.05)
        for pid in alive:
            log.warning("engine process %d did not exit; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for group in groups:
            log.warning("worker process group %d did not exit; killing it", group)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)

    def __enter__(self) -> LocalComputeEngine:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # -- tasks -------------------------------------------------------------------

    def submit(
        self, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
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
        outer: concurrent.futures.Future = concurrent.futures.Future()
        outer.set_running_or_notify_cancel()
        engine_future = GCFuture(gc_task_id=task_id)
        engine_future.add_done_callback(lambda f: self._resolve(f, outer, task_id))
        with self._submit_lock:
            self.engine.submit(engine_future, packed, resource_specification={})
        return outer

    def _resolve(
        self, engine_future: Any, outer: concurrent.futures.Future, task_id: uuid.UUID
    ) -> None:
        from globus_compute_common import messagepack

        try:
            result = messagepack.unpack(engine_future.result())
            if result.is_error:
                code = result.error_details.code if result.error_details else ""
                outer.set_exception(ComputeTaskError(result.data, task_id, code))
            else:
                outer.set_result(self._serializer.deserialize(result.data))
        except Exception as err:  # a failure of the engine itself, not of the task
            outer.set_exception(err)
