"""Deployment: put the flow definition on Globus Flows and the function on Globus Compute.

``deploy`` is idempotent and keyed by content hashes, so running it again after
every ``git pull`` is safe:

1. validate the definition and input schema with Globus Flows
   (``FlowsClient.validate_flow``); an invalid one stops here with the
   service's message;
2. create the flow, or update the one this installation created before (the
   flow id in the deployment state), or do nothing when its content hash
   (definition + input schema + title) is unchanged. A free Globus
   subscription holds one flow, so a second flow is never created while the
   state names one; only when Flows says that flow is gone (404) is a new one
   created, and the result says so;
3. register the compute function when the sha256 of its source text changed;
4. save the IDs and hashes in the deployment state.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import inspect
import json
import logging
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import globus_sdk

from flows.errors import FlowDefinitionError
from flows.globus.errors import GlobusServiceError, translate
from flows.globus.state import DeploymentState, save_state

log = logging.getLogger(__name__)

DEFAULT_TITLE = "ptychoflow: ptychography reconstruction (transfer in, GPU reconstruct, out)"


class Change(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    RECREATED = "recreated"
    """The flow in the state was gone (deleted on the web app); a new one was created."""


@dataclasses.dataclass(frozen=True)
class DeployResult:
    """What ``deploy`` did; ``state`` is what it saved."""

    flow: Change
    function: Change
    state: DeploymentState
    messages: tuple[str, ...] = ()
    """Sentences for the user (e.g. why a flow was created anew)."""

    @property
    def changed(self) -> bool:
        return self.flow is not Change.UNCHANGED or self.function is not Change.UNCHANGED


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal content, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def flow_content_hash(
    definition: dict[str, Any],
    input_schema: dict[str, Any],
    title: str,
    settings: Mapping[str, Any] | None = None,
) -> str:
    """``sha256:<hex>`` of the flow's content; any change to what Flows stores changes it.

    ``settings``: the other fields sent (keywords, run monitors and managers, flow
    starters, subscription), so a changed permission list is sent on the next deploy.
    """
    content: dict[str, Any] = {"definition": definition, "input_schema": input_schema}
    content["title"] = title
    if settings:
        content["settings"] = dict(settings)
    text = canonical_json(content)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def function_source_hash(function: Callable[..., Any]) -> str:
    """``sha256:<hex>`` of the function's qualified name and source text."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError) as err:
        raise GlobusServiceError(
            f"cannot read the source of {function!r} to register it with Globus Compute: {err}"
        ) from err
    name = f"{function.__module__}.{function.__qualname__}"
    return "sha256:" + hashlib.sha256(f"{name}\n{source}".encode()).hexdigest()


def load_json_file(path: pathlib.Path | str, what: str) -> dict[str, Any]:
    """Read the definition or schema file; a specific error names the file."""
    path = pathlib.Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise FlowDefinitionError(f"{path}: {what} file not found") from None
    except json.JSONDecodeError as err:
        raise FlowDefinitionError(f"{path}: {what} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise FlowDefinitionError(f"{path}: {what} must be a JSON object")
    return value


def validate_flow(
    flows_client: globus_sdk.FlowsClient,
    definition: dict[str, Any],
    input_schema: dict[str, Any],
) -> dict[str, Any]:
    """Ask Globus Flows to validate; returns its answer (e.g. the scopes the flow needs)."""
    try:
        response = flows_client.validate_flow(definition=definition, input_schema=input_schema)
    except globus_sdk.GlobusAPIError as err:
        if err.http_status in (400, 422):
            raise FlowDefinitionError(
                f"Globus Flows rejected the flow definition: {_validation_details(err)}"
            ) from err
        raise translate(err, "validating the flow definition") from err
    except globus_sdk.NetworkError as err:
        raise translate(err, "validating the flow definition") from err
    return dict(response.data or {})


def _validation_details(err: globus_sdk.GlobusAPIError) -> str:
    """The service's summary message, else each ``where: what`` detail, else the raw text."""
    raw = err.raw_json if isinstance(err.raw_json, dict) else {}
    error = raw.get("error")
    if isinstance(error, dict):
        if isinstance(error.get("message"), str) and error["message"]:
            return str(error["message"])
        details = error.get("detail")
        if isinstance(details, list):
            lines = [
                ".".join(str(part) for part in item.get("loc", [])) + f": {item['msg']}"
                for item in details
                if isinstance(item, dict) and "msg" in item
            ]
            if lines:
                return "; ".join(lines)
        if isinstance(details, str):
            return details
    return err.message or err.text or err.http_reason


def deploy(
    flows_client: globus_sdk.FlowsClient,
    compute_client: Any,
    *,
    definition: dict[str, Any],
    input_schema: dict[str, Any],
    state: DeploymentState,
    function: Callable[..., Any],
    state_dir: pathlib.Path | str | None = None,
    title: str = DEFAULT_TITLE,
    subtitle: str | None = None,
    description: str | None = None,
    keywords: Sequence[str] = ("ptychography", "ptychoflow"),
    subscription_id: str | None = None,
    run_managers: Sequence[str] = (),
    run_monitors: Sequence[str] = (),
    flow_starters: Sequence[str] = (),
    compute_endpoint: str | None = None,
    identity_function: Callable[..., Any] | None = None,
    now: Callable[[], datetime.datetime] | None = None,
) -> DeployResult:
    """Validate, create/update the flow, (re-)register the function, save the state.

    ``flows_client`` is a ``globus_sdk.FlowsClient``; ``compute_client`` a
    ``globus_compute_sdk.Client`` (its ``register_function(function, ...)``
    returns the new function id). ``state`` is the current deployment state
    (``flows.globus.state.load_state``); the new state is saved to ``state_dir`` when
    given and returned either way. ``run_managers`` / ``run_monitors`` are
    identity or group URNs the flow grants on every run; ``flow_starters`` the
    URNs allowed to start runs (the watcher's client: run managers cannot start
    runs). ``subscription_id`` keeps the flow from expiring after 30 days.
    ``identity_function`` (:func:`functions.code_identity.endpoint_identity`) is
    registered beside ``function`` for ``ptychoflow check``. Functions are
    registered ``public`` so the watcher's client may run a function a person
    registered (their source is this package's; the endpoint still runs only
    its owner's tasks).
    """
    now = now or (lambda: datetime.datetime.now(datetime.UTC))
    messages: list[str] = []
    new_state = dataclasses.replace(state)

    flow_fields: dict[str, Any] = {
        "title": title,
        "definition": definition,
        "input_schema": input_schema,
        "keywords": list(keywords),
        "run_managers": list(run_managers),
        "run_monitors": list(run_monitors),
        "flow_starters": list(flow_starters),
    }
    if subtitle is not None:
        flow_fields["subtitle"] = subtitle
    if description is not None:
        flow_fields["description"] = description
    if subscription_id:
        flow_fields["subscription_id"] = subscription_id
    settings = {
        key: value
        for key, value in flow_fields.items()
        if key not in ("title", "definition", "input_schema") and value
    }
    flow_hash = flow_content_hash(definition, input_schema, title, settings)

    if state.flow_id and state.flow_hash == flow_hash:
        flow_change = Change.UNCHANGED
    elif state.flow_id:
        # Only content about to be sent is validated: an unchanged flow costs no request.
        validate_flow(flows_client, definition, input_schema)
        try:
            flows_client.update_flow(state.flow_id, **flow_fields)
            flow_change = Change.UPDATED
        except globus_sdk.GlobusAPIError as err:
            if err.http_status != 404:
                raise translate(err, f"updating flow {state.flow_id}") from err
            messages.append(
                f"flow {state.flow_id} from the deployment state no longer exists on "
                "Globus Flows (deleted?); creating a new one"
            )
            new_state.flow_id = _create_flow(flows_client, flow_fields)
            flow_change = Change.RECREATED
        except globus_sdk.NetworkError as err:
            raise translate(err, f"updating flow {state.flow_id}") from err
    else:
        validate_flow(flows_client, definition, input_schema)
        new_state.flow_id = _create_flow(flows_client, flow_fields)
        flow_change = Change.CREATED
    new_state.flow_hash = flow_hash
    if flow_change is not Change.UNCHANGED:
        new_state.deployed_at = now().isoformat(timespec="seconds")
        if state_dir is not None:
            # Saved before the function step: if registration fails, the next
            # deploy updates this flow instead of creating a second one.
            save_state(state_dir, new_state)

    function_hash = function_source_hash(function)
    if state.function_id and state.function_hash == function_hash:
        function_change = Change.UNCHANGED
    else:
        new_state.function_id = _register_function(compute_client, function)
        function_change = Change.UPDATED if state.function_id else Change.CREATED
    new_state.function_hash = function_hash
    if identity_function is not None:
        identity_hash = function_source_hash(identity_function)
        if not (state.identity_function_id and state.identity_function_hash == identity_hash):
            new_state.identity_function_id = _register_function(compute_client, identity_function)
            function_change = (
                function_change
                if function_change is not Change.UNCHANGED
                else (Change.UPDATED if state.identity_function_id else Change.CREATED)
            )
        new_state.identity_function_hash = identity_hash
    if compute_endpoint is not None:
        new_state.compute_endpoint = compute_endpoint

    if function_change is not Change.UNCHANGED:
        new_state.deployed_at = now().isoformat(timespec="seconds")
    if state_dir is not None and new_state != state:
        save_state(state_dir, new_state)
    for message in messages:
        log.warning(message)
    return DeployResult(flow_change, function_change, new_state, tuple(messages))


def _create_flow(flows_client: globus_sdk.FlowsClient, flow_fields: dict[str, Any]) -> str:
    try:
        response = flows_client.create_flow(**flow_fields)
    except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as err:
        raise translate(err, "creating the flow") from err
    flow_id = response.get("id")
    if not flow_id:
        raise GlobusServiceError(f"creating the flow: the answer has no flow id: {response.data}")
    return str(flow_id)


def _register_function(compute_client: Any, function: Callable[..., Any]) -> str:
    name = getattr(function, "__qualname__", repr(function))
    try:
        function_id = compute_client.register_function(function, public=True)
    except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as err:
        raise translate(err, f"registering {name} with Globus Compute") from err
    if not function_id:
        raise GlobusServiceError(f"registering {name}: Globus Compute returned no function id")
    return str(function_id)
