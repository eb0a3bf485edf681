"""The flow definition and input schema as data: structure, paths, schema, flow input."""

from __future__ import annotations

import copy
import time

import jsonschema
import pytest

from flows.backend import ViewRequest
from flows.errors import ConfigError
from flows.flow_input import (
    COMPUTE_ACTION_URL,
    STAGE_OF_STATE,
    TRANSFER_ACTION_URL,
    build_flow_input,
    load_definition,
    load_input_schema,
    validate_flow_input,
)
from flows.local.errors import ActionRequestRefused
from flows.local.interpreter import FlowInterpreter
from flows.local.jsonpath import parse_path
from recon.errors import OptionsError
from recon.options import ArrayBackend, CostFunction, ReconOptions

ACTION_STATES = ("TransferIn", "Reconstruct", "TransferOut")
FLOWS_ACTION_ERRORS = ("ActionUnableToRun", "ActionFailedException", "ActionTimeout")


def sample_input(**recon):
    request = ViewRequest(scan_id=100, view_file="view003.cxi", scan_folder="scan100", recon=recon)
    return build_flow_input(
        request,
        acquisition_collection="11111111-1111-1111-1111-111111111111",
        acquisition_base="/beamline/data",
        compute_collection="22222222-2222-2222-2222-222222222222",
        compute_base="/ptycho",
        compute_endpoint="33333333-3333-3333-3333-333333333333",
        function_id="44444444-4444-4444-4444-444444444444",
        compute_root_on_endpoint="/eagle/project/ptycho",
    )


def transitions(state):
    targets = []
    if "Next" in state:
        targets.append(state["Next"])
    if "Default" in state:
        targets.append(state["Default"])
    targets += [rule["Next"] for rule in state.get("Choices", [])]
    targets += [catcher["Next"] for catcher in state.get("Catch", [])]
    return targets


def dollar_paths(value):
    """Every JSONPath used by a ``.$`` key of a Parameters template."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith(".$"):
                yield item
            else:
                yield from dollar_paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from dollar_paths(item)


def lookup(document, path):
    for step in parse_path(path, "test"):
        document = document[step]
    return document


def schema_has_path(schema, steps):
    """True when every run's input has ``steps``: each property on the way is required."""
    node = schema
    for step in steps:
        if isinstance(step, int):
            return False  # an array index may be out of range in some valid input
        if step not in node.get("required", []):
            return False
        node = node["properties"][step]
    return True


def test_every_state_is_defined_and_reachable_and_some_state_ends():
    definition = load_definition()
    states = definition["States"]
    assert definition["StartAt"] in states
    for name, state in states.items():
        for target in transitions(state):
            assert target in states, f"{name} -> {target} is not a state"
    reached, frontier = set(), [definition["StartAt"]]
    while frontier:
        name = frontier.pop()
        if name not in reached:
            reached.add(name)
            frontier += transitions(states[name])
    assert reached == set(states)
    assert any(s.get("End") or s["Type"] in ("Succeed", "Fail") for s in states.values())


def test_actions_are_the_three_stages_with_finite_waits_and_their_own_catch():
    states = load_definition()["States"]
    assert set(STAGE_OF_STATE) == set(ACTION_STATES)
    assert [n for n, s in states.items() if s["Type"] == "Action"] == list(ACTION_STATES)
    assert states["TransferIn"]["ActionUrl"] == TRANSFER_ACTION_URL
    assert states["TransferOut"]["ActionUrl"] == TRANSFER_ACTION_URL
    assert states["Reconstruct"]["ActionUrl"] == COMPUTE_ACTION_URL
    fail_states = set()
    for name in ACTION_STATES:
        state = states[name]
        assert 0 < state["WaitTime"] < 31 * 24 * 3600
        assert state["ExceptionOnActionFailure"] is True
        assert state["ResultPath"] == f"$.{name}Result"
        (catcher,) = state["Catch"]
        # The action errors the Globus Flows documentation names (not States.ALL).
        assert catcher["ErrorEquals"] == list(FLOWS_ACTION_ERRORS)
        assert catcher["ResultPath"] == f"$.{name}Error"
        fail = states[catcher["Next"]]
        assert fail["Type"] == "Fail"
        assert name in fail["Cause"]
        fail_states.add(catcher["Next"])
    assert len(fail_states) == 3, "each stage has its own Fail state"


def test_every_parameter_path_exists_in_the_schema_or_an_earlier_result():
    definition = load_definition()
    schema = load_input_schema()
    states = definition["States"]
    written: set[str] = set()
    name = definition["StartAt"]
    while name:
        state = states[name]
        for path in dollar_paths(state.get("Parameters", {})):
            steps = parse_path(path, name)
            assert steps, f"{name}: '$' alone would pass the whole state document"
            assert schema_has_path(schema, steps) or steps[0] in written, (
                f"{name}: {path} is neither required by the input schema nor written earlier"
            )
        if "ResultPath" in state:
            written.add(parse_path(state["ResultPath"], name)[0])
        name = state.get("Next")


def test_compute_task_passes_the_view_paths_and_options_as_keyword_arguments():
    (task,) = load_definition()["States"]["Reconstruct"]["Parameters"]["tasks"]
    assert task["args"] == []
    assert set(task["kwargs"]) == {
        "input_path.$",
        "output_dir.$",
        "view_name.$",
        "recon.$",
        "beamline.$",
    }
    assert task["kwargs"]["recon.$"] == "$.recon"


def test_transfer_out_moves_only_this_views_result_and_preview():
    flow_input = sample_input()
    data = load_definition()["States"]["TransferOut"]["Parameters"]["DATA"]
    pairs = [
        (lookup(flow_input, item["source_path.$"]), lookup(flow_input, item["destination_path.$"]))
        for item in data
    ]
    assert pairs == [
        ("/ptycho/recon/100/view003.h5", "/beamline/data/recon/100/view003.h5"),
        ("/ptycho/recon/100/view003.png", "/beamline/data/recon/100/view003.png"),
    ]
    assert all(item["recursive"] is False for item in data)


def test_schema_is_strict_and_documented_at_every_level():
    schema = load_input_schema()
    jsonschema.Draft202012Validator.check_schema(schema)

    def walk(node, where):
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, f"{where} is not strict"
            for name, child in node["properties"].items():
                assert child.get("title") and child.get("description"), f"{where}.{name}"
                walk(child, f"{where}.{name}")

    walk(schema, "$")
    assert set(schema["required"]) == set(schema["properties"])


def test_schema_recon_section_mirrors_recon_options():
    recon = load_input_schema()["properties"]["recon"]["properties"]
    assert list(recon) == ReconOptions.field_names()
    assert recon["cost"]["enum"] == [c.value for c in CostFunction]
    assert recon["backend"]["enum"] == [b.value for b in ArrayBackend]
    defaults = ReconOptions().to_dict()
    assert {name: prop["default"] for name, prop in recon.items()} == defaults


def test_build_flow_input_joins_paths_for_both_sides():
    flow_input = sample_input(iterations=7)
    assert flow_input["acquisition"]["view_path"] == "/beamline/data/scan100/view003.cxi"
    assert flow_input["compute_storage"]["view_path"] == "/ptycho/input/100/view003.cxi"
    function = flow_input["compute_function"]
    assert function["input_path"] == "/eagle/project/ptycho/input/100/view003.cxi"
    assert function["output_dir"] == "/eagle/project/ptycho/recon/100"
    assert function["view_name"] == "view003"
    assert flow_input["recon"] == ReconOptions(iterations=7).to_dict()
    assert flow_input["label"] == "ptychoflow scan100-view003"
    validate_flow_input(flow_input)


def test_unknown_key_is_rejected_with_its_json_path():
    flow_input = sample_input()
    flow_input["recon"]["iters"] = 5
    with pytest.raises(ConfigError, match=r"flow input \$\.recon: .*'iters' was unexpected"):
        validate_flow_input(flow_input)
    top = sample_input()
    top["extra"] = 1
    with pytest.raises(ConfigError, match=r"flow input \$: .*'extra'"):
        validate_flow_input(top)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["recon"].update(iterations=0), r"\$\.recon\.iterations: 0 is less than"),
        (lambda d: d["recon"].update(cost="l2"), r"\$\.recon\.cost: 'l2' is not one of"),
        (lambda d: d["acquisition"].pop("view_path"), r"\$\.acquisition: 'view_path' is a requ"),
        (lambda d: d["compute_storage"].update(view_path="relative"), r"view_path: 'relative'"),
    ],
)
def test_bad_values_name_their_path(change, message):
    flow_input = copy.deepcopy(sample_input())
    change(flow_input)
    with pytest.raises(ConfigError, match=message):
        validate_flow_input(flow_input)


def test_bad_recon_options_are_rejected_before_the_schema():
    with pytest.raises(OptionsError, match="unknown reconstruction option"):
        sample_input(iters=3)


def test_loaders_return_independent_copies():
    first = load_definition()
    first["States"].clear()
    assert load_definition()["States"]


def _succeeded(params):
    return {"action_id": "a", "status": "SUCCEEDED", "details": {"results": [{"output": {}}]}}


def _refused(params):
    raise ActionRequestRefused("tasks[0].function_id 'x' is not registered")


def _failed(params):
    return {"action_id": "a", "status": "FAILED", "display_status": "quota", "details": {}}


def _slow(params):
    time.sleep(0.5)
    return _succeeded(params)


@pytest.mark.parametrize(
    ("compute", "wait_time", "error"),
    [
        (_refused, None, "ActionUnableToRun"),
        (_failed, None, "ActionFailedException"),
        (_slow, 0.05, "ActionTimeout"),
    ],
)
def test_each_documented_action_error_is_caught_by_the_packaged_definition_locally(
    compute, wait_time, error
):
    definition = load_definition()
    if wait_time is not None:
        definition["States"]["Reconstruct"]["WaitTime"] = wait_time
    actions = {TRANSFER_ACTION_URL: _succeeded, COMPUTE_ACTION_URL: compute}
    result = FlowInterpreter(definition, actions).run(sample_input())
    assert result.output["ReconstructError"]["Error"] == error
    assert "TransferOutResult" not in result.output
    assert "ReconstructFailed" in (result.error or "")
