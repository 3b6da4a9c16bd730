"""Validation: one test per problem type, and all problems reported together."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import graph_stubs as stubs  # noqa: E402

from arnodes.graph import ValidationError, WorkflowError, validate  # noqa: E402

R = stubs.REGISTRY


def kinds(problems):
    return [p.type for p in problems]


def one(wf, kind):
    problems = validate(wf, R)
    assert kinds(problems) == [kind], problems
    return problems[0]


def test_valid_workflow_has_no_problems():
    wf = {"1": {"class_type": "Const", "inputs": {"value": 2}},
          "2": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 2, "mode": "down"}},
          "3": {"class_type": "Sink", "inputs": {"value": ["2", 0]}}}
    assert validate(wf, R) == []


def test_unknown_class_type():
    p = one({"1": {"class_type": "Nope", "inputs": {}}}, "unknown_node_type")
    assert p.node_id == "1" and "'Nope'" in p.message


def test_missing_required_input():
    p = one({"1": {"class_type": "Add", "inputs": {}}}, "missing_input")
    assert (p.node_id, p.class_type, p.input_name) == ("1", "Add", "a")
    assert "node 1 (Add) input 'a'" in p.message


def test_unknown_input():
    p = one({"1": {"class_type": "Const", "inputs": {"valu": 1}}}, "unknown_input")
    assert p.input_name == "valu" and "allowed inputs: value" in p.message


def test_link_to_missing_node():
    p = one({"1": {"class_type": "Sink", "inputs": {"value": ["9", 0]}}}, "missing_link_source")
    assert "node 9" in p.message and p.input_name == "value"


def test_link_to_missing_output_index():
    p = one({"1": {"class_type": "Const", "inputs": {}},
             "2": {"class_type": "Sink", "inputs": {"value": ["1", 3]}}}, "bad_output_index")
    assert "output 3 of node 1 (Const)" in p.message and "0: value (INT)" in p.message


def test_type_mismatch_on_link():
    p = one({"1": {"class_type": "MakeImage", "inputs": {}},
             "2": {"class_type": "ShowImage", "inputs": {"image": ["1", 1]}}}, "type_mismatch")
    assert "expects IMAGE" in p.message and "MASK" in p.message


def test_any_type_accepts_every_link():
    wf = {"1": {"class_type": "MakeImage", "inputs": {}}, "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}}}
    assert validate(wf, R) == []


def test_value_out_of_range():
    p = one({"1": {"class_type": "Const", "inputs": {"value": 101}}}, "value_out_of_range")
    assert "101" in p.message and "maximum 100" in p.message


def test_bad_combo_value():
    wf = {"1": {"class_type": "Const", "inputs": {}},
          "2": {"class_type": "Scale", "inputs": {"x": ["1", 0], "mode": "sideways"}}}
    p = one(wf, "bad_choice")
    assert "'sideways'" in p.message and "'up', 'down'" in p.message


@pytest.mark.parametrize("value", ["3", 2.5, True, None])
def test_wrong_literal_type(value):
    p = one({"1": {"class_type": "Const", "inputs": {"value": value}}}, "bad_value_type")
    assert "expects an integer" in p.message


def test_literal_for_link_only_input():
    p = one({"1": {"class_type": "ShowImage", "inputs": {"image": "cat.png"}}}, "link_required")
    assert "IMAGE" in p.message and "linked" in p.message


def test_cycle_names_its_nodes():
    wf = {"1": {"class_type": "Add", "inputs": {"a": ["3", 0]}},
          "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}},
          "3": {"class_type": "Add", "inputs": {"a": ["2", 0]}},
          "4": {"class_type": "Sink", "inputs": {"value": ["3", 0]}}}
    p = one(wf, "cycle")
    assert p.details["node_ids"] == ["1", "2", "3"]
    assert "1 (Add) -> 2 (Add) -> 3 (Add)" in p.message


def test_self_loop_is_a_cycle():
    assert one({"1": {"class_type": "Add", "inputs": {"a": ["1", 0]}}}, "cycle").details["node_ids"] == ["1"]


def test_empty_workflow():
    one({}, "empty_workflow")


def test_all_problems_reported_together():
    wf = {"1": {"class_type": "Nope", "inputs": {}},
          "2": {"class_type": "Add", "inputs": {"b": "x", "extra": 1}},
          "3": {"class_type": "Const", "inputs": {"value": -500}},
          "4": {"class_type": "Sink", "inputs": {"value": ["77", 0]}}}
    problems = validate(wf, R)
    assert sorted(kinds(problems)) == sorted(["unknown_node_type", "bad_value_type", "unknown_input",
                                              "missing_input", "value_out_of_range", "missing_link_source"])
    text = str(ValidationError(problems))
    assert text.startswith("workflow is invalid (6 problems):")
    assert all(f"node {n}" in text for n in "1234")


def test_malformed_shape_raises_workflow_error():
    with pytest.raises(WorkflowError, match="missing 'class_type'"):
        validate({"1": {"inputs": {}}}, R)
    with pytest.raises(WorkflowError, match="JSON object"):
        validate([1, 2], R)
