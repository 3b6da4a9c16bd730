"""Workflow I/O: JSON / PNG loading, malformed input, UI-format conversion, overrides, saving."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

sys.path.insert(0, str(Path(__file__).parent))
import graph_stubs as stubs  # noqa: E402

from arnodes.engine.errors import MissingFileError  # noqa: E402
from arnodes.graph import (  # noqa: E402
    UnknownNodeError, WorkflowError, apply_overrides, load_workflow, read_png_text, read_workflow,
    save_workflow_json, validate,
)

R = stubs.REGISTRY
API = {"1": {"class_type": "Const", "inputs": {"value": 3}},
       "2": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 2.0}},
       "3": {"class_type": "Sink", "inputs": {"value": ["2", 0]}}}


def test_load_from_dict_normalises_ids_and_links():
    wf = load_workflow({1: {"class_type": "Add", "inputs": {"a": [7, 0]}}, "7": {"class_type": "Const"}})
    assert wf == {"1": {"class_type": "Add", "inputs": {"a": ["7", 0]}}, "7": {"class_type": "Const", "inputs": {}}}


def test_load_json_file(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(API))
    assert load_workflow(path) == API
    assert load_workflow(str(path)) == API
    assert load_workflow(json.dumps(API)) == API


@pytest.mark.parametrize("text, match", [
    ('{"1": {"class_type": ', "not valid JSON: .* line 1 column"),
    ("[1, 2]", "must be a JSON object mapping node ids"),
    ('{"1": 5}', "node 1: must be an object"),
    ('{"1": {"inputs": {}}, "2": {"class_type": "X", "inputs": []}}', "node 1: missing 'class_type'(.|\n)*node 2"),
])
def test_malformed_json_errors(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(WorkflowError, match=match):
        load_workflow(path)


def test_missing_file_and_bad_source(tmp_path):
    with pytest.raises(MissingFileError, match="nope.json"):
        load_workflow(tmp_path / "nope.json")
    with pytest.raises(WorkflowError, match="cannot load a workflow from int"):
        load_workflow(5)


def _png(path, **text):
    info = PngInfo()
    for key, (value, zip_) in text.items():
        info.add_text(key, value, zip=zip_)
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("zip_", [False, True])
def test_png_round_trip(tmp_path, zip_):
    ui = {"nodes": [], "links": [], "version": 0.4}
    path = _png(tmp_path / "img.png", prompt=(json.dumps(API), zip_), workflow=(json.dumps(ui), zip_))
    loaded = read_workflow(path)
    assert loaded.prompt == API and loaded.ui_workflow == ui
    assert loaded.extra_pnginfo == {"workflow": ui}
    assert load_workflow(path.read_bytes()) == API


def test_png_itxt_unicode(tmp_path):
    wf = {"1": {"class_type": "Scale", "inputs": {"x": ["2", 0], "label": "kötü 猫"}},
          "2": {"class_type": "Const", "inputs": {}}}
    path = _png(tmp_path / "u.png", prompt=(json.dumps(wf, ensure_ascii=False), False))
    assert b"iTXt" in path.read_bytes()
    assert load_workflow(path) == wf


def test_png_without_workflow_and_corrupt_png(tmp_path):
    path = _png(tmp_path / "plain.png", Comment=("hello", False))
    assert read_png_text(path.read_bytes()) == {"Comment": "hello"}
    with pytest.raises(WorkflowError, match="no embedded workflow"):
        load_workflow(path)
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    with pytest.raises(WorkflowError, match="corrupt PNG|truncated PNG"):
        load_workflow(bytes(data))
    with pytest.raises(WorkflowError, match="truncated PNG"):
        load_workflow(bytes(path.read_bytes()[:30]))


# ----------------------------------------------------------------------------- UI format

UI = {
    "last_node_id": 6, "last_link_id": 4, "version": 0.4,
    "nodes": [
        {"id": 1, "type": "Const", "mode": 0, "widgets_values": [5], "inputs": [],
         "outputs": [{"name": "value", "type": "INT", "links": [1], "slot_index": 0}]},
        {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}],
         "outputs": [{"name": "", "type": "INT", "links": [2]}]},
        # widgets: x (linked, has no widget), factor, mode, flag, label; label is fed by a PrimitiveNode
        {"id": 3, "type": "Scale", "mode": 0, "title": "My scale",
         "inputs": [{"name": "x", "type": "INT", "link": 2},
                    {"name": "label", "type": "STRING", "widget": {"name": "label"}, "link": 4}],
         "outputs": [{"name": "y", "type": "FLOAT", "links": [3]}],
         "widgets_values": [2.5, "down", True, "hello"]},
        {"id": 4, "type": "Sink", "mode": 0, "inputs": [{"name": "value", "type": "*", "link": 3}],
         "widgets_values": [7, "randomize"]},
        {"id": 5, "type": "Note", "mode": 0, "widgets_values": ["just a note"]},
        {"id": 6, "type": "PrimitiveNode", "mode": 0, "outputs": [{"name": "STRING", "type": "STRING", "links": [4]}],
         "widgets_values": ["hello"]},
    ],
    "links": [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"], [3, 3, 0, 4, 0, "FLOAT"],
              [4, 6, 0, 3, 1, "STRING"]],
}


def test_ui_format_conversion(tmp_path):
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(UI))
    loaded = read_workflow(path, R)
    assert loaded.ui_workflow == UI
    assert loaded.prompt == {
        "1": {"class_type": "Const", "inputs": {"value": 5}, "_meta": {"title": "Const"}},
        "3": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 2.5, "mode": "down", "flag": True,
                                                "label": "hello"}, "_meta": {"title": "My scale"}},
        "4": {"class_type": "Sink", "inputs": {"value": ["3", 0], "seed": 7}, "_meta": {"title": "Sink"}},
    }
    assert validate(loaded.prompt, R) == []


def test_ui_format_all_widgets_listed_and_bypass():
    ui = json.loads(json.dumps(UI))
    ui["nodes"][2]["widgets_values"] = [0, 2.5, "down", True, "hello"]  # value kept for the linked x too
    wf = load_workflow(ui, R)
    assert wf["3"]["inputs"]["x"] == ["1", 0] and wf["3"]["inputs"]["factor"] == 2.5


def test_ui_format_bypassed_and_muted_nodes():
    ui = {"nodes": [
        {"id": 1, "type": "Const", "widgets_values": [5]},
        {"id": 2, "type": "Add", "mode": 4, "inputs": [{"name": "a", "type": "INT", "link": 1}],
         "outputs": [{"name": "sum", "type": "INT", "links": [2]}], "widgets_values": [1]},
        {"id": 3, "type": "Sink", "inputs": [{"name": "value", "type": "*", "link": 2}], "widgets_values": [0]},
        {"id": 4, "type": "Const", "mode": 2, "widgets_values": [1]},
        {"id": 5, "type": "Sink", "inputs": [{"name": "value", "type": "*", "link": 3}], "widgets_values": [0]}],
        "links": [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"], [3, 4, 0, 5, 0, "INT"]]}
    wf = load_workflow(ui, R)
    assert sorted(wf) == ["1", "3", "5"]
    assert wf["3"]["inputs"]["value"] == ["1", 0]  # through the bypassed Add
    assert "value" not in wf["5"]["inputs"]  # its source is muted: validation reports the gap
    assert [p.type for p in validate(wf, R)] == ["missing_input"]


def test_ui_format_errors():
    with pytest.raises(WorkflowError, match="needs the node registry"):
        load_workflow(UI)
    bad = json.loads(json.dumps(UI))
    bad["nodes"][0]["type"] = "KSampler"
    with pytest.raises(UnknownNodeError, match="'KSampler'.*Export \\(API\\)"):
        load_workflow(bad, R)
    bad = json.loads(json.dumps(UI))
    bad["nodes"][2]["widgets_values"] = [2.5]
    with pytest.raises(WorkflowError, match="node 3 \\(Scale\\).*cannot be matched.*Export \\(API\\)"):
        load_workflow(bad, R)


# ----------------------------------------------------------------------------- overrides / save

def test_overrides_coerce_by_type():
    wf = apply_overrides(API, ["1.value=-7", "2.factor=0.5", "2.flag=yes", "2.mode=down", "2.label=a=b",
                               "3.value=[1, 2]"], R)
    assert wf["1"]["inputs"]["value"] == -7
    assert wf["2"]["inputs"] == {"x": ["1", 0], "factor": 0.5, "flag": True, "mode": "down", "label": "a=b"}
    assert wf["3"]["inputs"]["value"] == [1, 2]
    assert API["1"]["inputs"]["value"] == 3  # the original is untouched


@pytest.mark.parametrize("item, error, match", [
    ("1value=3", WorkflowError, "expected NODE_ID.INPUT=VALUE"),
    ("9.value=3", UnknownNodeError, "no node '9'.*node ids: 1, 2, 3"),
    ("1.vlaue=3", WorkflowError, r"node 1 \(Const\) has no input 'vlaue'; inputs that can be set: value"),
    ("1.value=three", WorkflowError, "expects an integer, got 'three'"),
    ("1.value=500", WorkflowError, "above the maximum 100"),
    ("2.factor=nan", WorkflowError, "expects a finite number"),
    ("2.flag=maybe", WorkflowError, "expects true or false"),
    ("2.mode=left", WorkflowError, "not one of the allowed values: 'up', 'down'"),
])
def test_override_errors(item, error, match):
    with pytest.raises(error, match=match):
        apply_overrides(API, [item], R)


def test_override_of_link_only_input():
    assert apply_overrides(API, ["2.x=5"], R)["2"]["inputs"]["x"] == 5  # an INT socket takes a literal too
    wf = {"1": {"class_type": "MakeImage", "inputs": {}}, "2": {"class_type": "ShowImage",
                                                              "inputs": {"image": ["1", 0]}}}
    with pytest.raises(WorkflowError, match="IMAGE input, which takes a link"):
        apply_overrides(wf, ["2.image=cat.png"], R)


def test_save_workflow_json_is_atomic(tmp_path):
    path = save_workflow_json(tmp_path / "out.json", API)
    assert json.loads(path.read_text()) == API
    with pytest.raises(TypeError):
        save_workflow_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == API  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
