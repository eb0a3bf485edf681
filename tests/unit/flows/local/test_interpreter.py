"""The local flow interpreter: Flows semantics on tiny definitions."""

from __future__ import annotations

import threading

import pytest

from flows.errors import FlowDefinitionError
from flows.local.interpreter import FlowInterpreter
from flows.local.jsonpath import parse_path

URL = "https://example.org/action"
OTHER_URL = "https://example.org/other"


def succeeded(details):
    return {
        "action_id": "a1",
        "status": "SUCCEEDED",
        "details": details,
        "start_time": "2024-01-01T00:00:00+00:00",
        "completion_time": "2024-01-01T00:00:01+00:00",
    }


def failed(reason):
    return {"action_id": "a2", "status": "FAILED", "display_status": reason, "details": {}}


def action_state(**fields):
    state = {
        "Type": "Action",
        "ActionUrl": URL,
        "Parameters": {"x.$": "$.x"},
        "ResultPath": "$.Result",
        "WaitTime": 5,
        "ExceptionOnActionFailure": True,
        "End": True,
    }
    state.update(fields)
    return state


def flow(*states, start=None):
    """A definition from (name, state) pairs; the first is StartAt."""
    return {"StartAt": start or states[0][0], "States": dict(states)}


def echo(params):
    return succeeded({"received": params})


def test_parameters_resolve_nested_paths_indexes_and_the_whole_document():
    definition = flow(
        (
            "Act",
            action_state(
                Parameters={
                    "constant": 1,
                    "nested": {"value.$": "$.a.b"},
                    "items": [{"first.$": "$.list[0]"}, {"name.$": "$.list[1].name"}],
                    "whole.$": "$",
                }
            ),
        )
    )
    flow_input = {"a": {"b": "deep"}, "list": ["zero", {"name": "one"}]}
    result = FlowInterpreter(definition, {URL: echo}).run(flow_input)
    assert result.status == "SUCCEEDED", result.error
    received = result.output["Result"]["details"]["received"]
    assert received == {
        "constant": 1,
        "nested": {"value": "deep"},
        "items": [{"first": "zero"}, {"name": "one"}],
        "whole": flow_input,
    }
    assert result.output["a"] == {"b": "deep"}, "the input stays beside the result"


def test_results_of_successive_actions_are_kept_under_their_result_paths():
    definition = flow(
        ("One", action_state(ResultPath="$.OneResult", End=None, Next="Two")),
        (
            "Two",
            action_state(
                Parameters={"previous.$": "$.OneResult.details.received.x"},
                ResultPath="$.TwoResult",
            ),
        ),
    )
    del definition["States"]["One"]["End"]
    result = FlowInterpreter(definition, {URL: echo}).run({"x": 42})
    assert result.status == "SUCCEEDED"
    assert result.output["TwoResult"]["details"]["received"] == {"previous": 42}
    assert set(result.state_seconds) == {"One", "Two"}


def test_failed_action_is_caught_with_error_and_cause_under_the_catch_result_path():
    definition = flow(
        (
            "Act",
            action_state(
                Catch=[{"ErrorEquals": ["States.ALL"], "ResultPath": "$.ActError", "Next": "Bad"}]
            ),
        ),
        ("Bad", {"Type": "Fail", "Error": "ActFailed", "Cause": "Act did not work"}),
    )
    result = FlowInterpreter(definition, {URL: lambda params: failed("disk full")}).run({"x": 1})
    assert result.status == "FAILED"
    assert result.output["ActError"] == {"Error": "ActionFailedException", "Cause": "disk full"}
    assert "Result" not in result.output
    assert result.error == (
        "ActFailed: Act did not work (caused by Act: ActionFailedException: disk full)"
    )


def test_python_exception_in_an_action_is_an_action_failure_naming_it():
    def broken(params):
        raise ValueError("view003.cxi: /entry_1/data_1/data is missing")

    definition = flow(
        (
            "Act",
            action_state(
                Catch=[
                    {"ErrorEquals": ["ActionFailedException"], "ResultPath": "$.E", "Next": "Bad"}
                ]
            ),
        ),
        ("Bad", {"Type": "Fail", "Error": "E", "Cause": "c"}),
    )
    result = FlowInterpreter(definition, {URL: broken}).run({"x": 1})
    assert result.output["E"]["Error"] == "ActionFailedException"
    assert result.output["E"]["Cause"] == (
        "ValueError: view003.cxi: /entry_1/data_1/data is missing"
    )


def test_without_exception_on_failure_the_failed_status_is_stored_and_the_run_goes_on():
    definition = flow(("Act", action_state(ExceptionOnActionFailure=False)))
    result = FlowInterpreter(definition, {URL: lambda params: failed("nope")}).run({"x": 1})
    assert result.status == "SUCCEEDED"
    assert result.output["Result"]["status"] == "FAILED"


def test_uncaught_failure_fails_the_run_with_the_state_and_reason():
    definition = flow(("Act", action_state()))
    result = FlowInterpreter(definition, {URL: lambda params: failed("quota")}).run({"x": 1})
    assert result.status == "FAILED"
    assert result.error == "Act: ActionFailedException: quota"


def test_wait_time_is_the_actions_deadline():
    release = threading.Event()

    def slow(params):
        release.wait(10)
        return succeeded({})

    definition = flow(
        (
            "Act",
            action_state(
                WaitTime=0.2,
                Catch=[{"ErrorEquals": ["ActionTimeout"], "ResultPath": "$.Late", "Next": "Done"}],
            ),
        ),
        ("Done", {"Type": "Succeed"}),
    )
    try:
        result = FlowInterpreter(definition, {URL: slow}).run({"x": 1})
    finally:
        release.set()
    assert result.status == "SUCCEEDED"
    assert result.output["Late"]["Error"] == "ActionTimeout"
    assert "WaitTime=0.2 s" in result.output["Late"]["Cause"]
    assert 0.2 <= result.state_seconds["Act"] < 2


def test_catchers_are_matched_in_order_by_error_name():
    definition = flow(
        (
            "Act",
            action_state(
                Catch=[
                    {"ErrorEquals": ["ActionTimeout"], "ResultPath": "$.T", "Next": "Timeout"},
                    {"ErrorEquals": ["States.ALL"], "ResultPath": "$.A", "Next": "Other"},
                ]
            ),
        ),
        ("Timeout", {"Type": "Fail", "Error": "T"}),
        ("Other", {"Type": "Fail", "Error": "O"}),
    )
    result = FlowInterpreter(definition, {URL: lambda params: failed("x")}).run({"x": 1})
    assert result.error.startswith("O: ")
    assert "A" in result.output and "T" not in result.output


def test_missing_parameter_path_is_a_catchable_parameter_path_failure():
    definition = flow(
        (
            "Act",
            action_state(
                Parameters={"y.$": "$.nowhere.y"},
                Catch=[{"ErrorEquals": ["States.ALL"], "ResultPath": "$.E", "Next": "Bad"}],
            ),
        ),
        ("Bad", {"Type": "Fail"}),
    )
    calls = []
    result = FlowInterpreter(definition, {URL: calls.append}).run({"x": 1})
    assert calls == []
    assert result.output["E"]["Error"] == "States.ParameterPathFailure"
    assert "$.nowhere.y" in result.output["E"]["Cause"]


def test_pass_choice_and_wait_states():
    slept = []
    definition = flow(
        ("Set", {"Type": "Pass", "Result": {"n": 3}, "ResultPath": "$.counter", "Next": "Copy"}),
        (
            "Copy",
            {
                "Type": "Pass",
                "Parameters": {"m.$": "$.counter.n"},
                "ResultPath": "$.copied",
                "Next": "Decide",
            },
        ),
        (
            "Decide",
            {
                "Type": "Choice",
                "Choices": [
                    {
                        "And": [
                            {"Variable": "$.copied.m", "NumericGreaterThan": 2},
                            {"Not": {"Variable": "$.missing", "IsPresent": True}},
                        ],
                        "Next": "Pause",
                    }
                ],
                "Default": "Never",
            },
        ),
        ("Pause", {"Type": "Wait", "SecondsPath": "$.counter.n", "Next": "Done"}),
        ("Never", {"Type": "Fail", "Error": "WrongBranch"}),
        ("Done", {"Type": "Succeed"}),
    )
    result = FlowInterpreter(definition, {}, sleep=slept.append).run({})
    assert result.status == "SUCCEEDED", result.error
    assert result.output == {"counter": {"n": 3}, "copied": {"m": 3}}
    assert slept == [3.0]


def test_events_mark_entry_and_exit_of_each_state_with_monotonic_times():
    events = []
    definition = flow(("Act", action_state()))
    FlowInterpreter(
        definition,
        {URL: echo},
        on_event=lambda kind, name, payload: events.append((kind, name, payload)),
    ).run({"x": 1})
    assert [(kind, name) for kind, name, _ in events] == [
        ("state_entered", "Act"),
        ("state_exited", "Act"),
    ]
    entered, exited = events[0][2], events[1][2]
    assert exited["time"] >= entered["time"]
    assert exited["seconds"] == pytest.approx(exited["time"] - entered["time"])
    assert exited["error"] is None


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        (flow(("S", {"Type": "Map", "End": True})), "state type 'Map' is not supported"),
        (flow(("S", action_state(ActionUrl=OTHER_URL))), "no local action for ActionUrl"),
        (flow(("S", action_state(Next="S"))), "needs exactly one of Next"),
        (flow(("S", {**action_state(), "End": None, "Next": "Nowhere"})), "Next 'Nowhere'"),
        (flow(("S", action_state(OutputPath="$.x"))), "OutputPath not supported"),
        (flow(("S", action_state(Parameters={"y.=": "x + 1"}))), "expression key 'y.='"),
        (flow(("S", action_state(Parameters={"y.$": "$..x"}))), "JSONPath '\\$..x'"),
        (flow(("S", action_state(WaitTime=0))), "WaitTime must be a positive"),
        (
            flow(("S", action_state(Catch=[{"ErrorEquals": ["Oops"], "Next": "S"}]))),
            "error name 'Oops' is never raised",
        ),
        (
            flow(
                (
                    "S",
                    action_state(
                        Catch=[
                            {"ErrorEquals": ["States.ALL"], "Next": "S"},
                            {"ErrorEquals": ["ActionTimeout"], "Next": "S"},
                        ]
                    ),
                )
            ),
            "States.ALL must be the last",
        ),
        ({"StartAt": "Nope", "States": {"S": {"Type": "Succeed"}}}, "StartAt 'Nope'"),
    ],
)
def test_unsupported_or_broken_definitions_fail_at_load_time(definition, message):
    for state in definition["States"].values():
        if state.get("End") is None:
            state.pop("End", None)
    with pytest.raises(FlowDefinitionError, match=message):
        FlowInterpreter(definition, {URL: echo})


def test_parse_path_forms():
    assert parse_path("$", "t") == ()
    assert parse_path("$.a.b_c", "t") == ("a", "b_c")
    assert parse_path("$.a[2].b", "t") == ("a", 2, "b")
    with pytest.raises(FlowDefinitionError, match="starting with"):
        parse_path("a.b", "t")


def test_the_project_definition_loads_with_both_action_urls():
    from flows.flow_input import COMPUTE_ACTION_URL, TRANSFER_ACTION_URL, load_definition

    FlowInterpreter(load_definition(), {TRANSFER_ACTION_URL: echo, COMPUTE_ACTION_URL: echo})
    with pytest.raises(FlowDefinitionError, match=r"compute\.actions\.globus\.org"):
        FlowInterpreter(load_definition(), {TRANSFER_ACTION_URL: echo})
