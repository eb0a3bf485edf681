"""The production backend: one Globus Flows run per view.

- :meth:`GlobusBackend.prepare_scan` creates ``<compute_base>/input/<id>`` and
  ``<compute_base>/recon/<id>`` on the compute collection with Transfer mkdir
  ("already exists" is success);
- :meth:`GlobusBackend.start_view` starts the deployed flow with
  ``SpecificFlowClient.run_flow`` (label ``scan100-view003``, tags, run monitors
  and managers from the config) and returns the web-app link;
- :meth:`GlobusBackend.poll` maps the run's status and its log events to a
  :class:`~flows.backend.RunProgress` with per-stage seconds;
- :meth:`GlobusBackend.find_run` finds a run started before a crash by its
  label and tags (``attempt:N`` included), so it is adopted instead of started
  twice, and a forced re-run never adopts an earlier attempt's run;
- :meth:`GlobusBackend.resume` continues an INACTIVE run (after ``ptychoflow login``).

``run_flow`` is sent with the SDK's own retries off: a POST that timed out may
have started the run, so the launcher decides (it looks with ``find_run``
before starting again).

Errors come out as project errors (:mod:`flows.globus.errors`):
:class:`TransientBackendError` for 5xx/429/network trouble (retry with
backoff), :class:`GlobusAuthorizationError` when someone must log in again.
"""

from __future__ import annotations

import datetime
import logging
import posixpath
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import globus_sdk
from globus_sdk.token_storage import TokenValidationError

from flows.backend import STAGES, Backend, RunProgress, RunStatus, StartedRun, ViewRequest
from flows.config import Config
from flows.errors import ConfigError
from flows.globus import auth
from flows.globus.errors import (
    FLOW_GONE_HINT,
    FlowGoneError,
    GlobusServiceError,
    api_error_text,
    translate,
)
from flows.globus.state import load_state

log = logging.getLogger(__name__)

WEB_APP_RUN_URL = "https://app.globus.org/runs/{run_id}"

#: Flow state name -> stage name (:data:`flows.backend.STAGES`).
DEFAULT_STAGE_OF_STATE: Mapping[str, str] = {
    "TransferIn": "transfer_in",
    "Reconstruct": "compute",
    "TransferOut": "transfer_out",
}

#: Flows run statuses; anything else counts as failed.
ACTIVE_STATUS = "ACTIVE"
INACTIVE_STATUS = "INACTIVE"
SUCCEEDED_STATUS = "SUCCEEDED"

#: Most run-list pages ``find_run`` reads before giving up (each holds up to ~20 runs).
FIND_RUN_MAX_PAGES = 10
#: Longest failure text kept from a run (the ledger stores it; Flows causes can be long).
MAX_ERROR_CHARS = 2000

_API_ERRORS = (globus_sdk.GlobusAPIError, globus_sdk.NetworkError, TokenValidationError)


def run_web_url(run_id: str) -> str:
    return WEB_APP_RUN_URL.format(run_id=run_id)


class GlobusBackend(Backend):
    """Runs views on Globus Flows.

    ``flows_client``: ``globus_sdk.FlowsClient`` (run status, logs, run search);
    ``run_client``: ``globus_sdk.SpecificFlowClient`` for the deployed flow;
    ``transfer_client``: ``globus_sdk.TransferClient`` (see
    :func:`flows.globus.auth.transfer_client`, which does not retry "exists").
    ``input_builder`` turns a :class:`ViewRequest` into the flow input (a dict
    that validates against the flow's input schema).

    A ``GlobusApp`` is not thread safe, so every request is made under one lock:
    a backend instance may be shared by the watcher's threads.
    """

    name = "globus"
    #: Each run is polled at most every 15 s, backing off to 60 s while nothing changes
    #: (a long compute); its log is read only when its status changed.
    poll_interval_range_s = (15.0, 60.0)

    def __init__(
        self,
        config: Config,
        *,
        flow_id: str,
        input_builder: Callable[[ViewRequest], dict[str, Any]],
        flows_client: globus_sdk.FlowsClient,
        run_client: globus_sdk.SpecificFlowClient,
        transfer_client: globus_sdk.TransferClient,
        stage_of_state: Mapping[str, str] = DEFAULT_STAGE_OF_STATE,
    ) -> None:
        if not flow_id:
            raise ConfigError("no flow id: run `ptychoflow deploy` first")
        unknown = sorted(set(stage_of_state.values()) - set(STAGES))
        if unknown:
            raise ValueError(f"stage_of_state maps to unknown stage(s) {unknown}; known {STAGES}")
        self.config = config
        self.flow_id = str(flow_id)
        self.input_builder = input_builder
        self.flows_client = flows_client
        self.run_client = run_client
        self.transfer_client = transfer_client
        self.stage_of_state = dict(stage_of_state)
        self._lock = threading.RLock()
        self._made_dirs: set[str] = set()
        #: run id -> (status, stage seconds, stage) from its log, read when the status changed.
        self._log_cache: dict[str, tuple[str, dict[str, float], str | None]] = {}

    @classmethod
    def from_app(
        cls,
        config: Config,
        app: globus_sdk.GlobusApp,
        *,
        input_builder: Callable[[ViewRequest], dict[str, Any]],
        flow_id: str | None = None,
        data_access_collections: Iterable[str] = (),
        manage_runs: bool = False,
    ) -> GlobusBackend:
        """Build the clients on ``app``; the flow id defaults to the deployment state's.
        ``manage_runs``: also ask for Flows' ``run_manage`` scope (``cancel`` only)."""
        flow_id = flow_id or load_state(config.state_dir).flow_id
        if not flow_id:
            raise ConfigError(
                f"no deployed flow in {config.state_dir}: run `ptychoflow deploy` first"
            )
        collections = list(data_access_collections or config.globus.data_access_collections)
        return cls(
            config,
            flow_id=flow_id,
            input_builder=input_builder,
            flows_client=auth.flows_client(app, manage_runs=manage_runs),
            run_client=auth.specific_flow_client(flow_id, app, data_access_collections=collections),
            transfer_client=auth.transfer_client(app, data_access_collections=collections),
        )

    # -- compute-side folders -------------------------------------------------------------

    def compute_dirs(self, scan_dir: str) -> tuple[str, str]:
        """``(<compute_base>/input/<scan_dir>, <compute_base>/recon/<scan_dir>)`` on the
        compute collection (``scan_dir``: the scan id, or the scan folder's name)."""
        base = self.config.globus.compute_base or "/"
        return (
            posixpath.join(base, "input", str(scan_dir)),
            posixpath.join(base, "recon", str(scan_dir)),
        )

    def prepare_scan(self, scan_dir: str) -> None:
        """Create the input/recon folder pair (and their parents, once per backend)."""
        collection = self.config.globus.compute_collection
        if not collection:
            raise ConfigError("[globus] compute_collection is not set in the config")
        for directory in self.compute_dirs(scan_dir):
            parent = posixpath.dirname(directory)
            if parent not in self._made_dirs and parent not in ("", "/", "/~", "~"):
                self._mkdir(collection, parent)
            self._mkdir(collection, directory)

    def _mkdir(self, collection: str, path: str) -> None:
        doing = f"creating {path} on collection {collection}"
        try:
            with self._lock:
                self.transfer_client.operation_mkdir(collection, path)
        except globus_sdk.GlobusAPIError as err:
            if not str(err.code or "").startswith("ExternalError.MkdirFailed.Exists"):
                raise translate(err, doing) from err
            log.debug("%s: already exists", path)
        except (globus_sdk.NetworkError, TokenValidationError) as err:
            raise translate(err, doing) from err
        self._made_dirs.add(path)

    def remove_compute_copies(self, scan_dir: str, *, wait_s: float = 0.0) -> str | None:
        """Remove ``input/<scan_dir>`` and ``recon/<scan_dir>`` on the compute collection
        with one Transfer delete task (recursive; missing folders ignored). Never touches
        the acquisition collection. Returns the task id, or, with ``wait_s``, None once it
        succeeded (a sentence when it did not finish in time or failed)."""
        collection = self.config.globus.compute_collection
        delete = globus_sdk.DeleteData(
            endpoint=collection,
            label=f"ptychoflow remove {scan_dir}"[:128],
            recursive=True,
            ignore_missing=True,
        )
        for directory in self.compute_dirs(scan_dir):
            delete.add_item(directory)
        doing = f"removing input/{scan_dir} and recon/{scan_dir} on collection {collection}"
        try:
            with self._lock:
                task_id = str(self.transfer_client.submit_delete(delete)["task_id"])
        except _API_ERRORS as err:
            raise translate(err, doing) from err
        if wait_s <= 0:
            return task_id
        import time

        deadline = time.monotonic() + wait_s
        while True:
            try:
                with self._lock:
                    status = str(self.transfer_client.get_task(task_id)["status"])
            except _API_ERRORS as err:
                raise translate(err, doing) from err
            if status == "SUCCEEDED":
                return None
            if status == "FAILED" or time.monotonic() >= deadline:
                return f"{doing}: delete task {task_id} is {status}"
            time.sleep(2.0)

    # -- runs ------------------------------------------------------------------------------

    def start_view(self, request: ViewRequest) -> StartedRun:
        """Start the flow for one view; returns its run id and web-app link."""
        body = self.input_builder(request)
        doing = f"starting the flow run for {request.label}"
        try:
            # No SDK retries: a retried POST after a lost answer would start a second run.
            with self._lock, self.run_client.retry_config.tune(max_retries=0):
                response = self.run_client.run_flow(
                    body=body,
                    label=request.label,
                    tags=request.tags,
                    run_monitors=list(self.config.globus.run_monitors),
                    run_managers=list(self.config.globus.run_managers),
                )
        except globus_sdk.GlobusAPIError as err:
            if err.http_status == 404:
                raise FlowGoneError(
                    f"{doing}: flow {self.flow_id}: {FLOW_GONE_HINT} ({api_error_text(err)})"
                ) from err
            raise translate(err, doing) from err
        except _API_ERRORS as err:
            raise translate(err, doing) from err
        run_id = response.get("run_id")
        if not run_id:
            raise GlobusServiceError(f"{doing}: the answer has no run_id: {response.data}")
        return StartedRun(run_id=str(run_id), web_url=run_web_url(str(run_id)))

    def poll(self, run_id: str) -> RunProgress:
        """The run's status, current stage and per-stage seconds.

        One request (``GET /runs/{id}``) while the status stays the same; the run log
        (per-stage times) is read again only when the status changed, and once more when
        the run ended.
        """
        doing = f"reading the status of run {run_id}"
        try:
            with self._lock:
                run = self.flows_client.get_run(run_id).data
                status = str(run.get("status", "")).upper()
                cached = self._log_cache.get(run_id)
                if cached is None or cached[0] != status:
                    events = list(self._run_log_events(run_id))
                    seconds, running = stage_times(events, self.stage_of_state)
                    self._log_cache[run_id] = (status, seconds, running)
                _, seconds, running = self._log_cache[run_id]
        except _API_ERRORS as err:
            raise translate(err, doing) from err
        progress = progress_from_run(run, (), self.stage_of_state)
        progress.stage_seconds = dict(seconds)
        if not progress.status.terminal:
            progress.stage = _state_stage(run, self.stage_of_state) or running
        else:
            self._log_cache.pop(run_id, None)
        return progress

    def _run_log_events(self, run_id: str) -> Iterator[dict[str, Any]]:
        pages = self.flows_client.paginated.get_run_logs(run_id, limit=100)
        for page in pages:
            yield from page.get("entries", [])

    def find_run(self, request: ViewRequest) -> StartedRun | None:
        """The newest run of this flow with the request's label and scan/view/attempt tags.

        A run with no ``attempt:`` tag (started before attempts were tagged) counts
        as attempt 1.
        """
        doing = f"searching runs for {request.label}"
        wanted_tags = {tag for tag in request.tags if not tag.startswith("trigger:")}
        matches: list[dict[str, Any]] = []
        try:
            with self._lock:
                pages = self.flows_client.paginated.list_runs(
                    filter_flow_id=self.flow_id,
                    # Narrows the search on the service (a substring match); the
                    # exact label and tag check below decides.
                    query_params={"filter_label": request.label},
                )
                for number, page in enumerate(pages):
                    for run in page.get("runs", []):
                        tags = set(run.get("tags") or [])
                        if (
                            run.get("label") == request.label
                            and wanted_tags <= tags
                            and run_attempt(tags) == request.attempt
                        ):
                            matches.append(run)
                    if number + 1 >= FIND_RUN_MAX_PAGES:
                        break
        except _API_ERRORS as err:
            raise translate(err, doing) from err
        if not matches:
            return None
        newest = max(matches, key=lambda run: _parse_time(run.get("start_time")) or _EPOCH)
        run_id = str(newest["run_id"])
        return StartedRun(run_id=run_id, web_url=run_web_url(run_id))

    def resume(self, run_id: str) -> RunProgress:
        """Ask Flows to continue an INACTIVE run (``POST /runs/{id}/resume``).

        Call it after the missing consent was given (``ptychoflow login``); the
        run's new status is returned (ACTIVE, or INACTIVE again with the reason).
        """
        doing = f"resuming run {run_id}"
        try:
            with self._lock:
                run = self.run_client.resume_run(run_id).data
        except _API_ERRORS as err:
            raise translate(err, doing) from err
        return progress_from_run(run, (), self.stage_of_state)

    def cancel(self, run_id: str) -> RunProgress:
        """Cancel a run at Flows (``POST /runs/{id}/cancel``; needs ``run_manage``, so
        build the backend with ``manage_runs``). Returns the run's status after it."""
        doing = f"cancelling run {run_id}"
        try:
            with self._lock:
                run = self.flows_client.cancel_run(run_id).data
        except _API_ERRORS as err:
            raise translate(err, doing) from err
        return progress_from_run(run, (), self.stage_of_state)

    def close(self, *, cancel: bool = False) -> None:
        """Nothing to release: clients hold no threads; the app's token file stays. Runs
        go on at the service with or without ``cancel`` (they outlive this process)."""


# -- mapping Flows documents to RunProgress ------------------------------------------------

_EPOCH = datetime.datetime.fromtimestamp(0, datetime.UTC)


def _parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def stage_times(
    events: Iterable[Mapping[str, Any]], stage_of_state: Mapping[str, str] = DEFAULT_STAGE_OF_STATE
) -> tuple[dict[str, float], str | None]:
    """Seconds per finished stage and the stage running now, from run log events.

    A stage starts at an ``ActionStarted`` event of its state and ends at the
    next ``ActionCompleted`` / ``ActionFailed`` (any ``Action*`` event other than
    a start) of the same state. Repeated stages add up.
    """
    seconds: dict[str, float] = {}
    started: dict[str, datetime.datetime] = {}
    for event in events:
        code = str(event.get("code", ""))
        if not code.startswith("Action"):
            continue
        details = event.get("details") or {}
        stage = stage_of_state.get(str(details.get("state_name", "")))
        when = _parse_time(event.get("time"))
        if stage is None or when is None:
            continue
        if code == "ActionStarted":
            started[stage] = when
        elif stage in started:
            begin = started.pop(stage)
            seconds[stage] = seconds.get(stage, 0.0) + max(0.0, (when - begin).total_seconds())
    running = next(reversed(started), None) if started else None
    return seconds, running


def _state_stage(run: Mapping[str, Any], stage_of_state: Mapping[str, str]) -> str | None:
    """The stage a run document names in its details (``details.details.state_name`` of
    the last event, when Flows gives it), so the stage is known without the run log."""
    details = run.get("details")
    inner = details.get("details") if isinstance(details, dict) else None
    name = inner.get("state_name") if isinstance(inner, dict) else None
    return stage_of_state.get(str(name)) if name else None


def run_attempt(tags: Iterable[str]) -> int:
    """The attempt number in a run's ``attempt:N`` tag; 1 when it has none."""
    for tag in tags:
        name, _, number = str(tag).partition(":")
        if name == "attempt" and number.isdigit():
            return int(number)
    return 1


#: What a person does about an INACTIVE run, by the code Flows gives in its details.
#: Short, because ``status`` shows the first 160 characters: the fix comes first.
#: ``--force``: without it the client app sees its stored tokens and skips the new
#: consent the run waits for.
INACTIVE_FIXES: Mapping[str, str] = {
    "ConsentRequired": (
        "run `ptychoflow login --force` as the run's starter (the watcher: its "
        "credentials in the environment), then `ptychoflow resume`"
    ),
}
DEFAULT_INACTIVE_FIX = "see the run in the web app, fix it, then `ptychoflow resume`"


def inactive_text(run: Mapping[str, Any]) -> str:
    """Why a run is INACTIVE and what to do, fix first:
    ``inactive (ConsentRequired): run `ptychoflow login` ...; <description> (scope ...)``.

    For the watcher's runs "the identity that started it" is the watcher's client:
    run ``login`` with its credentials in the environment.
    """
    details = run.get("details") or {}
    if not isinstance(details, dict):
        details = {}
    code = str(details.get("code") or "")
    description = str(details.get("description") or "")
    scope = details.get("required_scope")
    fix = INACTIVE_FIXES.get(code, DEFAULT_INACTIVE_FIX)
    text = f"inactive ({code or 'no reason given'}): {fix}"
    if description:
        text += f"; {description}"
    if scope:
        text += f" (scope {scope})"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _find_task_output(value: Any, depth: int = 0) -> Any:
    """The first ``details.results[0].output`` (Compute action provider v3 result) in ``value``."""
    if depth > 6 or not isinstance(value, dict):
        return None
    results = (value.get("details") or {}).get("results") if "details" in value else None
    first = results[0] if isinstance(results, list) and results else None
    if isinstance(first, dict) and "output" in first:
        return first["output"]
    for child in value.values():
        found = _find_task_output(child, depth + 1)
        if found is not None:
            return found
    return None


def _failure_records(value: Any, depth: int = 0) -> Iterator[str]:
    """``Error: Cause`` texts found in a run's details (Catch records, Fail states)."""
    if depth > 6 or not isinstance(value, dict):
        return
    error = value.get("Error", value.get("error"))
    cause = value.get("Cause", value.get("cause"))
    if isinstance(error, str | dict) or isinstance(cause, str | dict):
        parts = [str(part) for part in (error, cause) if part not in (None, "")]
        if parts:
            yield ": ".join(parts)
    for key, child in value.items():
        if key in ("input",):
            continue
        yield from _failure_records(child, depth + 1)


def failure_text(run: Mapping[str, Any]) -> str:
    """Why a run failed, from its details: the Catch/Fail records, else the run's description."""
    details = run.get("details") or {}
    records = list(dict.fromkeys(_failure_records(details)))
    status = run.get("status", "FAILED")
    if records:
        text = "; ".join(records)
    else:
        code = details.get("code") if isinstance(details, dict) else None
        description = details.get("description") if isinstance(details, dict) else None
        text = ": ".join(str(part) for part in (code, description) if part) or "no reason given"
    text = f"run {str(status).lower()}: {text}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def progress_from_run(
    run: Mapping[str, Any],
    events: Iterable[Mapping[str, Any]] = (),
    stage_of_state: Mapping[str, str] = DEFAULT_STAGE_OF_STATE,
) -> RunProgress:
    """Map a Flows run document (and its log events) to :class:`RunProgress`."""
    status_text = str(run.get("status", "")).upper()
    seconds, running = stage_times(events, stage_of_state)
    if status_text == ACTIVE_STATUS:
        return RunProgress(RunStatus.ACTIVE, stage=running, stage_seconds=seconds)
    if status_text == INACTIVE_STATUS:
        return RunProgress(
            RunStatus.INACTIVE, stage=running, stage_seconds=seconds, error=inactive_text(run)
        )
    if status_text == SUCCEEDED_STATUS:
        output = _find_task_output((run.get("details") or {}).get("output") or {})
        return RunProgress(
            RunStatus.SUCCEEDED,
            stage_seconds=seconds,
            output=output if isinstance(output, dict) else None,
        )
    return RunProgress(RunStatus.FAILED, stage_seconds=seconds, error=failure_text(run))
