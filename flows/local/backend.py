"""The embedded local backend: the flow definition run by the local interpreter.

Each view's run executes ``flows/definition.json`` with
:class:`~flows.local.interpreter.FlowInterpreter` in a thread of a pool sized by
``config.concurrency``. The action URLs map to local actions:

- Transfer (``https://transfer.actions.globus.org/transfer``):
  :func:`flows.local.transfer.transfer_action` between ``config.acquisition_root``
  (collection ``local-acquisition``) and ``config.compute_root``
  (collection ``local-compute``).
- Compute v3 (``https://compute.actions.globus.org/v3``): each task's
  ``function_id`` is looked up in ``function_registry`` and submitted through
  the injected ``compute_submit(func, *args, **kwargs) -> Future`` (in
  production a Globus Compute engine's submit, so the function goes through the
  same serialization path as on a real endpoint); the result has the Compute
  action provider's shape, outputs at ``details.results[i].output``.

Runs live in this process only: :meth:`LocalBackend.poll` knows the runs this
backend started; the run ledger is what survives a restart.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.backend import Backend, RunProgress, RunStatus, StartedRun, ViewRequest
from flows.config import Config
from flows.errors import ConfigError
from flows.flow_input import (
    COMPUTE_ACTION_URL,
    STAGE_OF_STATE,
    TRANSFER_ACTION_URL,
    build_flow_input,
    load_definition,
)
from flows.local.errors import ActionRequestRefused, RunCancelledError, UnknownRunError
from flows.local.interpreter import FlowInterpreter, FlowRunResult
from flows.local.transfer import (
    LOCAL_ACQUISITION_COLLECTION,
    LOCAL_COMPUTE_COLLECTION,
    transfer_action,
)

#: Compute endpoint ID the local backend puts into the flow input.
LOCAL_COMPUTE_ENDPOINT = "local-endpoint"
#: Function ID under which the local backend registers ``reconstruct_view``.
LOCAL_RECONSTRUCT_FUNCTION = "ptychoflow-reconstruct-view"

ComputeSubmit = Callable[..., "concurrent.futures.Future[Any]"]


@dataclasses.dataclass
class _LocalRun:
    run_id: str
    request: ViewRequest
    started: float
    status: RunStatus = RunStatus.ACTIVE
    stage: str | None = None
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str | None = None
    output: dict[str, Any] | None = None
    future: concurrent.futures.Future[None] | None = None


class LocalBackend(Backend):
    """Runs the flow definition on this machine (see the module docstring)."""

    name = "local"
    runs_die_with_owner = True

    def __init__(
        self,
        config: Config,
        compute_submit: ComputeSubmit,
        function_registry: dict[str, Callable[..., Any]],
        *,
        function_id: str | None = None,
        definition: dict[str, Any] | None = None,
    ) -> None:
        """``function_id``: the registry entry views run (default: the registry's only one)."""
        if function_id is None:
            if len(function_registry) != 1:
                raise ConfigError(
                    "local backend: pass function_id when the function registry holds "
                    f"{len(function_registry)} functions"
                )
            (function_id,) = function_registry
        if function_id not in function_registry:
            raise ConfigError(f"local backend: function_id {function_id!r} is not in the registry")
        self.config = config
        self.function_id = function_id
        self._compute_submit = compute_submit
        self._registry = dict(function_registry)
        self._roots = {
            LOCAL_ACQUISITION_COLLECTION: Path(config.acquisition_root),
            LOCAL_COMPUTE_COLLECTION: Path(config.compute_root),
        }
        self._actions = {
            TRANSFER_ACTION_URL: self._transfer_action,
            COMPUTE_ACTION_URL: self._compute_action,
        }
        self._definition = load_definition() if definition is None else definition
        # Build one interpreter now so a definition it cannot run fails here, not in a run.
        FlowInterpreter(self._definition, self._actions)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.concurrency, thread_name_prefix="local-flow"
        )
        self._runs: dict[str, _LocalRun] = {}
        #: Compute tasks submitted and not yet finished (abandoned by close(cancel=True)).
        self._compute_futures: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._closed = False
        #: Called (in order) after the runs ended in :meth:`close`, e.g. an engine's shutdown.
        self.on_close: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ Backend protocol

    def prepare_scan(self, scan_dir: str) -> None:
        """Create ``<compute_root>/input/<scan_dir>/`` and ``<compute_root>/recon/<scan_dir>/``."""
        for side in ("input", "recon"):
            (Path(self.config.compute_root) / side / str(scan_dir)).mkdir(
                parents=True, exist_ok=True
            )

    def start_view(self, request: ViewRequest) -> StartedRun:
        """Queue the view's run and return its fresh id at once."""
        if self._closed:
            raise ConfigError("local backend: start_view after close()")
        flow_input = build_flow_input(
            request,
            acquisition_collection=LOCAL_ACQUISITION_COLLECTION,
            acquisition_base="/",
            compute_collection=LOCAL_COMPUTE_COLLECTION,
            compute_base="/",
            compute_endpoint=LOCAL_COMPUTE_ENDPOINT,
            function_id=self.function_id,
            compute_root_on_endpoint=str(self.config.compute_root),
        )
        run = _LocalRun(run_id=str(uuid.uuid4()), request=request, started=time.monotonic())
        with self._lock:
            self._runs[run.run_id] = run
            run.future = self._pool.submit(self._execute, run, flow_input)
        return StartedRun(run_id=run.run_id)

    def poll(self, run_id: str) -> RunProgress:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise UnknownRunError(
                    f"run {run_id} was not started by this local backend "
                    "(local runs exist only in the process that started them)"
                )
            status, stage = run.status, run.stage
            stage_seconds, error = dict(run.stage_seconds), run.error
            output = None if run.output is None else dict(run.output)
            request = run.request
        if status is RunStatus.ACTIVE and stage == "compute" and output is None:
            # The compute function keeps its progress beside the result it is making
            # (recon.progress): iteration, cost, elapsed and remaining seconds, image.
            from recon.progress import read_progress

            folder = Path(self.config.compute_root) / "recon" / request.compute_dir
            progress = read_progress(folder, request.view)
            if progress is not None:
                output = {"progress": progress}
        return RunProgress(
            status=status, stage=stage, stage_seconds=stage_seconds, error=error, output=output
        )

    def find_run(self, request: ViewRequest) -> StartedRun | None:
        """The latest run this backend started for the request's label, if any."""
        with self._lock:
            matching = [run for run in self._runs.values() if run.request.label == request.label]
        if not matching:
            return None
        return StartedRun(run_id=max(matching, key=lambda run: run.started).run_id)

    def close(self, *, cancel: bool = False) -> None:
        """Cancel queued runs (recorded as failed at once) and wait for running ones to end;
        with ``cancel``, compute tasks still running are abandoned first (their runs fail
        at once with "cancelled") so the engine can be shut down without waiting."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        if cancel:
            with self._lock:
                abandoned = list(self._compute_futures)
            for future in abandoned:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(RunCancelledError("cancelled: run-flow was stopped"))
        running = []
        with self._lock:
            for run in self._runs.values():
                if run.future is None:
                    continue
                if run.future.cancelled():
                    run.status = RunStatus.FAILED
                    run.error = "cancelled: the local backend was closed before the run started"
                else:
                    running.append(run.future)
        # (A future cancelled by shutdown never counts as done for wait(): leave those out.)
        try:
            concurrent.futures.wait(running)
            self._pool.shutdown(wait=True)
        finally:
            # Also when the wait is interrupted (Ctrl-C): the engine's shutdown stops its
            # processes and fails the tasks still running, so the run threads end too.
            while self.on_close:
                self.on_close.pop(0)()

    def wait(self, run_id: str, timeout: float | None = None) -> RunProgress:
        """Block until the run ends (or ``timeout`` seconds pass); return its progress."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None or run.future is None:
            raise UnknownRunError(f"run {run_id} was not started by this local backend")
        if not run.future.cancelled():
            concurrent.futures.wait([run.future], timeout=timeout)
        return self.poll(run_id)

    # ------------------------------------------------------------------ running a flow

    def _execute(self, run: _LocalRun, flow_input: dict[str, Any]) -> None:
        def on_event(kind: str, state_name: str, payload: dict[str, Any]) -> None:
            stage = STAGE_OF_STATE.get(state_name)
            if stage is None:
                return
            with self._lock:
                if kind == "state_entered":
                    run.stage = stage
                elif kind == "state_exited":
                    run.stage = None
                    run.stage_seconds[stage] = run.stage_seconds.get(stage, 0.0) + float(
                        payload["seconds"]
                    )

        try:
            result = FlowInterpreter(self._definition, self._actions, on_event=on_event).run(
                flow_input
            )
        except Exception as err:  # an interpreter bug must not vanish inside the pool
            with self._lock:
                run.status = RunStatus.FAILED
                run.stage = None
                run.error = f"local backend: {type(err).__name__}: {err}"
            return
        with self._lock:
            run.stage = None
            if result.status == "SUCCEEDED":
                run.output = _compute_output(result.output)
                run.status = RunStatus.SUCCEEDED
            else:
                run.error = _run_error(result)
                run.status = RunStatus.FAILED

    def _transfer_action(self, params: dict[str, Any]) -> dict[str, Any]:
        return transfer_action(params, self._roots)

    def _forget_compute_future(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._compute_futures.discard(future)

    def _compute_action(self, params: dict[str, Any]) -> dict[str, Any]:
        """The Compute action provider v3, locally: run each task, wait, collect outputs."""
        start_time = _now_iso()
        action_id = str(uuid.uuid4())

        def failed(reason: str, results: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "action_id": action_id,
                "status": "FAILED",
                "display_status": reason,
                "details": {"description": reason, "results": results},
                "start_time": start_time,
                "completion_time": _now_iso(),
            }

        # A request the Compute action provider would refuse: ActionUnableToRun.
        if params.get("endpoint_id") != LOCAL_COMPUTE_ENDPOINT:
            raise ActionRequestRefused(
                f"endpoint_id {params.get('endpoint_id')!r} is not the local endpoint "
                f"({LOCAL_COMPUTE_ENDPOINT!r})"
            )
        tasks = params.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise ActionRequestRefused("tasks must be a non-empty list")
        for index, task in enumerate(tasks):
            if task.get("function_id") not in self._registry:
                raise ActionRequestRefused(
                    f"tasks[{index}].function_id {task.get('function_id')!r} is not registered "
                    f"with the local backend (registered: {', '.join(sorted(self._registry))})"
                )
        submitted: list[tuple[str, concurrent.futures.Future[Any]]] = []
        for task in tasks:
            function = self._registry[task["function_id"]]
            future = self._compute_submit(function, *task.get("args", []), **task.get("kwargs", {}))
            with self._lock:
                self._compute_futures.add(future)
            future.add_done_callback(self._forget_compute_future)
            submitted.append((str(uuid.uuid4()), future))
        results: list[dict[str, Any]] = []
        failure: str | None = None
        for task_id, future in submitted:
            try:
                output = future.result()
            except Exception as err:
                reason = f"{type(err).__name__}: {err}"
                failure = failure or reason
                results.append(
                    {
                        "task_id": task_id,
                        "status": "failed",
                        "exception": "".join(traceback.format_exception_only(err)).strip(),
                    }
                )
            else:
                results.append({"task_id": task_id, "status": "success", "output": output})
        if failure is not None:
            return failed(failure, results)
        return {
            "action_id": action_id,
            "status": "SUCCEEDED",
            "display_status": "SUCCEEDED",
            "details": {"results": results},
            "start_time": start_time,
            "completion_time": _now_iso(),
        }


def _compute_output(document: dict[str, Any]) -> dict[str, Any] | None:
    """The compute function's summary from a finished run's state document."""
    try:
        output = document["ReconstructResult"]["details"]["results"][0]["output"]
    except (KeyError, IndexError, TypeError):
        return None
    return output if isinstance(output, dict) else {"value": output}


def _run_error(result: FlowRunResult) -> str:
    """``<stage>: <reason>`` from the error a stage's Catch recorded, else the run's error."""
    for state_name, stage in STAGE_OF_STATE.items():
        caught = (
            result.output.get(f"{state_name}Error") if isinstance(result.output, dict) else None
        )
        if isinstance(caught, dict) and "Cause" in caught:
            if caught.get("Error") == "ActionFailedException":
                return f"{stage} failed: {caught['Cause']}"
            return f"{stage} failed: {caught.get('Error')}: {caught['Cause']}"
    return result.error or "the run failed"


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def open_local_backend(config: Config) -> LocalBackend:
    """The production local backend: a real Globus Compute engine built from
    ``config.endpoint_config`` (default: the ``endpoint_config/local`` folder) runs
    ``functions.reconstruct.reconstruct_view`` through the endpoint's serialization
    path, its workers confined to ``config.compute_root`` (``PTYCHOFLOW_ALLOWED_ROOTS``,
    set by the endpoint template); :meth:`LocalBackend.close` shuts the engine down."""
    from flows.local.compute import LocalComputeEngine
    from flows.private_folders import ensure_private_dir
    from functions.reconstruct import reconstruct_view

    ensure_private_dir(config.state_dir)  # refused when others can write it; never chmodded
    # The workers may read and write only under the compute root (PTYCHOFLOW_ALLOWED_ROOTS).
    engine = LocalComputeEngine(
        config.endpoint_config,
        run_dir=Path(config.state_dir) / "engine",
        allowed_roots=[config.compute_root],
    )
    engine.start()
    try:
        backend = LocalBackend(
            config, engine.submit, {LOCAL_RECONSTRUCT_FUNCTION: reconstruct_view}
        )
    except BaseException:
        engine.shutdown()
        raise
    backend.on_close.append(engine.shutdown)
    return backend
