"""Run a Globus Flows definition on this machine.

The local backend executes ``flows/definition.json`` with this interpreter, so
the definition deployed to Globus Flows is the one tested locally. It
implements the subset of the flow language (the Amazon States Language plus the
``Action`` state) that the definition uses, with Flows semantics:

- ``Action``: ``InputPath``, ``Parameters`` (keys ending in ``.$`` are JSONPaths
  into the state document, at any depth, including inside lists),
  ``ActionUrl`` (mapped to a local callable), ``ResultPath``, ``WaitTime``
  (the action's deadline: past it, the error ``ActionTimeout``),
  ``ExceptionOnActionFailure`` (a ``FAILED`` action raises
  ``ActionFailedException``; otherwise its status document is stored and the
  run goes on), ``Catch`` (``ErrorEquals``, ``ResultPath``, ``Next``). An
  action callable that raises :class:`~flows.local.errors.ActionRequestRefused`
  (the request itself is wrong) is ``ActionUnableToRun``, as Flows names an
  action provider's refusal to start.
- ``Pass`` (``InputPath``, ``Parameters``, ``Result``, ``ResultPath``),
  ``Choice`` (``Variable`` with ``StringEquals``, ``NumericEquals``,
  ``NumericLessThan[Equals]``, ``NumericGreaterThan[Equals]``,
  ``BooleanEquals``, ``IsPresent``, ``IsNull``; ``And``/``Or``/``Not``;
  ``Default``), ``Wait`` (``Seconds``, ``SecondsPath``), ``Fail``
  (``Error``, ``Cause``), ``Succeed``; ``Next``/``End``.
- JSONPaths of the forms ``$``, ``$.a.b``, ``$.a[0]`` and combinations.

Anything else (an unknown state type or field, an expression key ``.=``, an
action URL with no local action, a ``Next`` to no state) is a
:class:`FlowDefinitionError` when the interpreter is built, never mid-run.

An action callable takes the resolved parameters and returns an action status
document, the shape the real action providers return::

    {"action_id": str, "status": "SUCCEEDED" | "FAILED", "details": {...},
     "display_status": str (optional), "start_time": str, "completion_time": str}

Callables run synchronously (they return when the action has finished), so
``ACTIVE`` or ``INACTIVE`` are protocol errors here. A Python exception in the
callable becomes a ``FAILED`` status document whose ``display_status`` is the
exception's message. Each call runs in its own daemon thread so that
``WaitTime`` can be enforced; a timed-out callable cannot be killed and is left
to finish in the background (its result is discarded).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from flows.errors import FlowDefinitionError
from flows.local.errors import ActionRequestRefused
from flows.local.jsonpath import PathNotFound, format_path, get_path, parse_path, set_path

ActionCallable = Callable[[dict[str, Any]], dict[str, Any]]
EventCallback = Callable[[str, str, dict[str, Any]], None]

#: Error names a ``Catch`` may name (``States.ALL`` matches every one of them).
KNOWN_ERRORS = (
    "States.ALL",
    "ActionFailedException",
    "ActionTimeout",
    "ActionUnableToRun",
    "States.ParameterPathFailure",
    "States.ResultPathMatchFailure",
    "States.NoChoiceMatched",
)

_COMMON_FIELDS = {"Type", "Comment"}
_TRANSITION_FIELDS = {"Next", "End"}
_ALLOWED_FIELDS = {
    "Action": _COMMON_FIELDS
    | _TRANSITION_FIELDS
    | {
        "ActionUrl",
        "InputPath",
        "Parameters",
        "ResultPath",
        "WaitTime",
        "ExceptionOnActionFailure",
        "Catch",
    },
    "Pass": _COMMON_FIELDS
    | _TRANSITION_FIELDS
    | {"InputPath", "Parameters", "Result", "ResultPath"},
    "Choice": _COMMON_FIELDS | {"Choices", "Default"},
    "Wait": _COMMON_FIELDS | _TRANSITION_FIELDS | {"Seconds", "SecondsPath"},
    "Fail": _COMMON_FIELDS | {"Error", "Cause"},
    "Succeed": _COMMON_FIELDS,
}
_TERMINAL_TYPES = {"Fail", "Succeed"}
_CHOICE_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "StringEquals": lambda value, operand: isinstance(value, str) and value == operand,
    "NumericEquals": lambda value, operand: _is_number(value) and value == operand,
    "NumericLessThan": lambda value, operand: _is_number(value) and value < operand,
    "NumericLessThanEquals": lambda value, operand: _is_number(value) and value <= operand,
    "NumericGreaterThan": lambda value, operand: _is_number(value) and value > operand,
    "NumericGreaterThanEquals": lambda value, operand: _is_number(value) and value >= operand,
    "BooleanEquals": lambda value, operand: isinstance(value, bool) and value == operand,
    "IsNull": lambda value, operand: (value is None) == operand,
}
#: Most state transitions one run may take (a guard against Choice loops).
MAX_TRANSITIONS = 10_000


class _StateError(Exception):
    """An error raised while executing a state; ``Catch`` may handle it."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


@dataclasses.dataclass
class FlowRunResult:
    """How a run ended."""

    status: str
    """``SUCCEEDED`` or ``FAILED``."""
    output: dict[str, Any]
    """The final state document (input plus every ``ResultPath`` written)."""
    error: str | None = None
    """Why the run failed: the ``Fail`` state's Error and Cause, and the caught error behind it."""
    state_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds spent in each state visited (summed over visits), by state name."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


# --------------------------------------------------------------------------- interpreter


class FlowInterpreter:
    """Executes one flow definition; :meth:`run` may be called many times, from many threads.

    ``actions`` maps each ``ActionUrl`` to a callable (see the module docstring).
    ``on_event(kind, state_name, payload)`` is called with ``kind`` ``"state_entered"``
    (payload ``{"time": monotonic seconds}``) and ``"state_exited"`` (payload
    ``{"time", "seconds", "error"}``, ``error`` None unless the state raised).
    """

    def __init__(
        self,
        definition: Mapping[str, Any],
        actions: Mapping[str, ActionCallable],
        *,
        on_event: EventCallback | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.definition = copy.deepcopy(dict(definition))
        self.actions = dict(actions)
        self.on_event = on_event
        self.sleep = sleep
        self.clock = clock
        self._check_definition()

    # ---------------------------------------------------------------- load-time checks

    def _check_definition(self) -> None:
        definition = self.definition
        unknown = sorted(set(definition) - {"StartAt", "States", "Comment"})
        if unknown:
            raise FlowDefinitionError(f"definition: unsupported top-level field(s) {unknown}")
        states = definition.get("States")
        if not isinstance(states, dict) or not states:
            raise FlowDefinitionError("definition: 'States' must be a non-empty object")
        start = definition.get("StartAt")
        if start not in states:
            raise FlowDefinitionError(f"definition: StartAt {start!r} is not a state")
        for name, state in states.items():
            self._check_state(name, state, states)

    def _check_state(self, name: str, state: Any, states: dict[str, Any]) -> None:
        where = f"state {name!r}"
        if not isinstance(state, dict):
            raise FlowDefinitionError(f"{where}: must be an object")
        kind = state.get("Type")
        if kind not in _ALLOWED_FIELDS:
            raise FlowDefinitionError(
                f"{where}: state type {kind!r} is not supported by the local interpreter "
                f"(supported: {', '.join(sorted(_ALLOWED_FIELDS))})"
            )
        unknown = sorted(set(state) - _ALLOWED_FIELDS[kind])
        if unknown:
            raise FlowDefinitionError(
                f"{where}: field(s) {', '.join(unknown)} not supported on a {kind} state"
            )

        def check_target(target: Any, field: str) -> None:
            if target not in states:
                raise FlowDefinitionError(f"{where}: {field} {target!r} is not a state")

        if kind not in _TERMINAL_TYPES and kind != "Choice":
            has_next, has_end = "Next" in state, state.get("End") is True
            if has_next == has_end:
                raise FlowDefinitionError(f"{where}: needs exactly one of Next or End: true")
            if has_next:
                check_target(state["Next"], "Next")
        for field in ("InputPath", "SecondsPath"):
            if field in state:
                parse_path(state[field], f"{where} {field}")
        if state.get("ResultPath") is not None:
            parse_path(state["ResultPath"], f"{where} ResultPath")
        if "Parameters" in state:
            self._check_parameters(state["Parameters"], f"{where} Parameters")
        if kind == "Action":
            url = state.get("ActionUrl")
            if url not in self.actions:
                raise FlowDefinitionError(
                    f"{where}: no local action for ActionUrl {url!r} "
                    f"(local actions: {', '.join(sorted(self.actions)) or 'none'})"
                )
            wait = state.get("WaitTime", 300)
            if not _is_number(wait) or wait <= 0:
                raise FlowDefinitionError(f"{where}: WaitTime must be a positive number")
            if not isinstance(state.get("ExceptionOnActionFailure", False), bool):
                raise FlowDefinitionError(f"{where}: ExceptionOnActionFailure must be a boolean")
            catchers = state.get("Catch", [])
            if not isinstance(catchers, list):
                raise FlowDefinitionError(f"{where}: Catch must be a list")
            for index, catcher in enumerate(catchers):
                self._check_catcher(catcher, f"{where} Catch[{index}]", states)
                if "States.ALL" in catcher["ErrorEquals"] and index != len(catchers) - 1:
                    raise FlowDefinitionError(
                        f"{where}: the catcher with States.ALL must be the last one"
                    )
        elif kind == "Choice":
            choices = state.get("Choices")
            if not isinstance(choices, list) or not choices:
                raise FlowDefinitionError(f"{where}: Choices must be a non-empty list")
            for index, rule in enumerate(choices):
                self._check_choice_rule(rule, f"{where} Choices[{index}]", top_level=True)
                check_target(rule["Next"], f"Choices[{index}] Next")
            if "Default" in state:
                check_target(state["Default"], "Default")
        elif kind == "Wait":
            if ("Seconds" in state) == ("SecondsPath" in state):
                raise FlowDefinitionError(f"{where}: needs exactly one of Seconds or SecondsPath")
            if "Seconds" in state and (not _is_number(state["Seconds"]) or state["Seconds"] < 0):
                raise FlowDefinitionError(f"{where}: Seconds must be a number >= 0")
        elif kind == "Fail":
            for field in ("Error", "Cause"):
                if field in state and not isinstance(state[field], str):
                    raise FlowDefinitionError(f"{where}: {field} must be a string")

    def _check_parameters(self, value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key.endswith(".="):
                    raise FlowDefinitionError(
                        f"{where}: expression key {key!r} is not supported by the local "
                        "interpreter (use a '.$' JSONPath)"
                    )
                if key.endswith(".$"):
                    parse_path(item, f"{where} {key}")
                else:
                    self._check_parameters(item, f"{where}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._check_parameters(item, f"{where}[{index}]")

    def _check_catcher(self, catcher: Any, where: str, states: dict[str, Any]) -> None:
        if not isinstance(catcher, dict):
            raise FlowDefinitionError(f"{where}: must be an object")
        unknown = sorted(set(catcher) - {"ErrorEquals", "Next", "ResultPath", "Comment"})
        if unknown:
            raise FlowDefinitionError(f"{where}: unsupported field(s) {', '.join(unknown)}")
        errors = catcher.get("ErrorEquals")
        if not isinstance(errors, list) or not errors:
            raise FlowDefinitionError(f"{where}: ErrorEquals must be a non-empty list")
        for error in errors:
            if error not in KNOWN_ERRORS:
                raise FlowDefinitionError(
                    f"{where}: error name {error!r} is never raised here "
                    f"(known: {', '.join(KNOWN_ERRORS)})"
                )
        if catcher.get("Next") not in states:
            raise FlowDefinitionError(f"{where}: Next {catcher.get('Next')!r} is not a state")
        if catcher.get("ResultPath") is not None:
            parse_path(catcher["ResultPath"], f"{where} ResultPath")

    def _check_choice_rule(self, rule: Any, where: str, *, top_level: bool) -> None:
        if not isinstance(rule, dict):
            raise FlowDefinitionError(f"{where}: must be an object")
        fields = set(rule) - {"Comment"}
        if top_level:
            if "Next" not in fields:
                raise FlowDefinitionError(f"{where}: a top-level choice rule needs Next")
            fields -= {"Next"}
        if fields in ({"And"}, {"Or"}):
            (operator,) = fields
            if not isinstance(rule[operator], list) or not rule[operator]:
                raise FlowDefinitionError(f"{where}: {operator} must be a non-empty list")
            for index, sub in enumerate(rule[operator]):
                self._check_choice_rule(sub, f"{where} {operator}[{index}]", top_level=False)
            return
        if fields == {"Not"}:
            self._check_choice_rule(rule["Not"], f"{where} Not", top_level=False)
            return
        comparisons = fields - {"Variable"}
        supported = set(_CHOICE_COMPARISONS) | {"IsPresent"}
        if "Variable" not in fields or len(comparisons) != 1 or not comparisons <= supported:
            raise FlowDefinitionError(
                f"{where}: needs Variable and one comparison of "
                f"{', '.join(sorted(supported))}; got {sorted(fields)}"
            )
        parse_path(rule["Variable"], f"{where} Variable")

    # ---------------------------------------------------------------- execution

    def run(self, flow_input: Mapping[str, Any]) -> FlowRunResult:
        """Execute the flow on ``flow_input`` (the run's initial state document)."""
        document: Any = json.loads(json.dumps(flow_input))
        states = self.definition["States"]
        name = self.definition["StartAt"]
        state_seconds: dict[str, float] = {}
        last_caught: dict[str, str] | None = None
        for _ in range(MAX_TRANSITIONS):
            state = states[name]
            entered = self.clock()
            self._emit("state_entered", name, {"time": entered})
            error: _StateError | None = None
            next_name: str | None = None
            try:
                document, next_name = self._execute(name, state, document)
            except _StateError as err:
                error = err
            exited = self.clock()
            state_seconds[name] = state_seconds.get(name, 0.0) + (exited - entered)
            self._emit(
                "state_exited",
                name,
                {
                    "time": exited,
                    "seconds": exited - entered,
                    "error": None if error is None else str(error),
                },
            )
            if error is not None:
                catcher = self._matching_catcher(state, error.error)
                if catcher is None:
                    return FlowRunResult(
                        "FAILED", document, f"{name}: {error.error}: {error.cause}", state_seconds
                    )
                caught = {"Error": error.error, "Cause": error.cause}
                last_caught = {"state": name, **caught}
                try:
                    document = self._place(document, catcher.get("ResultPath", "$"), caught)
                except _StateError as err:
                    return FlowRunResult(
                        "FAILED", document, f"{name}: {err.error}: {err.cause}", state_seconds
                    )
                next_name = catcher["Next"]
            if state["Type"] == "Fail":
                message = f"{state.get('Error', 'States.Fail')}: {state.get('Cause', '')}"
                if last_caught is not None:
                    message += (
                        f" (caused by {last_caught['state']}: "
                        f"{last_caught['Error']}: {last_caught['Cause']})"
                    )
                return FlowRunResult("FAILED", document, message, state_seconds)
            if next_name is None:
                return FlowRunResult("SUCCEEDED", document, None, state_seconds)
            name = next_name
        return FlowRunResult(
            "FAILED", document, f"run exceeded {MAX_TRANSITIONS} state transitions", state_seconds
        )

    def _emit(self, kind: str, state_name: str, payload: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, state_name, payload)

    def _execute(self, name: str, state: dict[str, Any], document: Any) -> tuple[Any, str | None]:
        """Run one state: the new document and the next state's name (None: the run ends)."""
        kind = state["Type"]
        following = None if state.get("End") else state.get("Next")
        if kind in _TERMINAL_TYPES:
            return document, None
        if kind == "Choice":
            return document, self._choose(name, state, document)
        if kind == "Wait":
            seconds = state.get("Seconds")
            if "SecondsPath" in state:
                seconds = self._resolve_path(state["SecondsPath"], document, f"{name} SecondsPath")
                if not _is_number(seconds) or seconds < 0:
                    raise _StateError(
                        "States.ParameterPathFailure",
                        f"{name}: SecondsPath {state['SecondsPath']} is {seconds!r}, "
                        "not a number >= 0",
                    )
            self.sleep(float(seconds or 0))
            return document, following
        effective = self._resolve_path(state.get("InputPath", "$"), document, f"{name} InputPath")
        if "Parameters" in state:
            effective = self._resolve_parameters(state["Parameters"], effective, name)
        if kind == "Pass":
            result = copy.deepcopy(state["Result"]) if "Result" in state else effective
        else:  # Action
            result = self._run_action(name, state, effective)
        return self._place(document, state.get("ResultPath", "$"), result), following

    def _resolve_path(self, path: str, document: Any, where: str) -> Any:
        try:
            return copy.deepcopy(get_path(document, parse_path(path, where)))
        except PathNotFound:
            raise _StateError(
                "States.ParameterPathFailure", f"{where}: {path} is not in the state document"
            ) from None

    def _resolve_parameters(self, template: Any, document: Any, name: str) -> Any:
        if isinstance(template, dict):
            resolved = {}
            for key, value in template.items():
                if key.endswith(".$"):
                    resolved[key[:-2]] = self._resolve_path(value, document, f"{name} {key}")
                else:
                    resolved[key] = self._resolve_parameters(value, document, name)
            return resolved
        if isinstance(template, list):
            return [self._resolve_parameters(item, document, name) for item in template]
        return copy.deepcopy(template)

    def _place(self, document: Any, result_path: str | None, result: Any) -> Any:
        if result_path is None:
            return document
        steps = parse_path(result_path, "ResultPath")
        try:
            return set_path(document, steps, result)
        except PathNotFound:
            raise _StateError(
                "States.ResultPathMatchFailure",
                f"ResultPath {format_path(steps)} cannot be set in the state document",
            ) from None

    def _matching_catcher(self, state: dict[str, Any], error: str) -> dict[str, Any] | None:
        for catcher in state.get("Catch", []):
            if error in catcher["ErrorEquals"] or "States.ALL" in catcher["ErrorEquals"]:
                return dict(catcher)
        return None

    def _choose(self, name: str, state: dict[str, Any], document: Any) -> str:
        for rule in state["Choices"]:
            if self._rule_matches(rule, document):
                return str(rule["Next"])
        if "Default" in state:
            return str(state["Default"])
        raise _StateError("States.NoChoiceMatched", f"{name}: no choice rule matched")

    def _rule_matches(self, rule: dict[str, Any], document: Any) -> bool:
        if "And" in rule:
            return all(self._rule_matches(sub, document) for sub in rule["And"])
        if "Or" in rule:
            return any(self._rule_matches(sub, document) for sub in rule["Or"])
        if "Not" in rule:
            return not self._rule_matches(rule["Not"], document)
        try:
            value = get_path(document, parse_path(rule["Variable"], "Variable"))
            present = True
        except PathNotFound:
            value, present = None, False
        if "IsPresent" in rule:
            return bool(present == rule["IsPresent"])
        if not present:
            return False
        (comparison,) = set(rule) & set(_CHOICE_COMPARISONS)
        return bool(_CHOICE_COMPARISONS[comparison](value, rule[comparison]))

    def _run_action(self, name: str, state: dict[str, Any], parameters: Any) -> dict[str, Any]:
        action = self.actions[state["ActionUrl"]]
        wait_time = float(state.get("WaitTime", 300))
        outcome: dict[str, Any] = {}
        finished = threading.Event()
        start_time = _now_iso()

        def call() -> None:
            try:
                outcome["result"] = action(copy.deepcopy(parameters))
            except Exception as err:
                outcome["exception"] = err
            finally:
                finished.set()

        thread = threading.Thread(target=call, name=f"flow-action-{name}", daemon=True)
        thread.start()
        if not finished.wait(wait_time):
            raise _StateError(
                "ActionTimeout",
                f"the action at {state['ActionUrl']} did not finish within "
                f"WaitTime={wait_time:g} s",
            )
        if isinstance(outcome.get("exception"), ActionRequestRefused):
            raise _StateError("ActionUnableToRun", str(outcome["exception"]))
        if "exception" in outcome:
            err = outcome["exception"]
            status = {
                "action_id": str(uuid.uuid4()),
                "status": "FAILED",
                "display_status": f"{type(err).__name__}: {err}",
                "details": {"error": type(err).__name__, "description": str(err)},
                "start_time": start_time,
                "completion_time": _now_iso(),
            }
        else:
            status = self._check_status_document(name, outcome.get("result"))
        if status["status"] == "FAILED" and state.get("ExceptionOnActionFailure", False):
            raise _StateError("ActionFailedException", _failure_reason(status))
        return status

    def _check_status_document(self, name: str, result: Any) -> dict[str, Any]:
        if not isinstance(result, dict) or "status" not in result:
            return {
                "action_id": str(uuid.uuid4()),
                "status": "FAILED",
                "display_status": "the local action did not return an action status document",
                "details": {"returned": repr(result)[:500]},
            }
        if result["status"] not in ("SUCCEEDED", "FAILED"):
            return {
                **result,
                "status": "FAILED",
                "display_status": (
                    f"the local action returned status {result['status']!r}; local actions "
                    "must return SUCCEEDED or FAILED once finished"
                ),
            }
        try:
            json.dumps(result)
        except (TypeError, ValueError) as err:
            raise _StateError(
                "ActionFailedException", f"the action's result is not JSON: {err}"
            ) from None
        return result


def _failure_reason(status: dict[str, Any]) -> str:
    """A one-line reason from a FAILED action status document."""
    reason = status.get("display_status")
    if not reason:
        details = status.get("details")
        reason = (details.get("description") if isinstance(details, dict) else None) or json.dumps(
            details, default=str
        )[:1000]
    return str(reason)
