"""Regression tests for the crash classes issue 16 found (fuzzer and new-user runs), plus the CLI's
split between bad input (exit 2, "error:") and our own bugs (exit 70, "internal error").

Each case runs the bundled model's generate workflow (the path `arnodes run` takes) with one
hostile change, and must end in a typed user error that names the problem, with nothing written
outside the output folder.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from arnodes.cli import EXIT_BAD_INPUT, EXIT_INTERNAL, main
from arnodes.engine.errors import ArnodesError, LimitError, UnsupportedError
from arnodes.graph import Executor, NodeExecutionError, WorkflowError, read_workflow
from arnodes.graph.registry import default_registry
from arnodes.nodes.base import ExecutionContext
from arnodes.nodes.io_image import ImageScale
from arnodes.nodes.tokenize import ARDecode

REPO = Path(__file__).resolve().parent.parent
BASE = json.loads((REPO / "workflows" / "generate.json").read_text())
pytestmark = pytest.mark.skipif(not (REPO / "weights" / "emoji.json").is_file(), reason="bundled model missing")


def run(workflow, tmp_path: Path):
    """read_workflow + Executor.run into tmp_path/out; returns the RunResult."""
    registry = default_registry()
    loaded = read_workflow(workflow, registry)
    (tmp_path / "in").mkdir(exist_ok=True)
    return Executor(registry).run(loaded.prompt, input_dir=tmp_path / "in", output_dir=tmp_path / "out")


def changed(node: str, name: str, value) -> dict:
    wf = copy.deepcopy(BASE)
    wf[node]["inputs"][name] = value
    return wf


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def assert_user_error(exc: BaseException, *needles: str) -> None:
    assert isinstance(exc, ArnodesError) and not getattr(exc, "internal", False), repr(exc)
    for needle in needles:
        assert needle in str(exc), str(exc)


@pytest.mark.parametrize("depth", [40, 500, 1000])
def test_deeply_nested_filename_prefix(tmp_path, depth):
    with pytest.raises(WorkflowError) as info:
        run(changed("5", "filename_prefix", nested(depth)), tmp_path)
    assert_user_error(info.value, "node 5", "'filename_prefix'", "nested more than 32 levels")
    with pytest.raises(WorkflowError, match="nested"):  # the same as JSON text, however deep
        run(json.dumps(BASE)[:-1] + ', "9": {"class_type": "X", "inputs": {"a": ' + "[" * 5000 + "]" * 5000 + "}}}",
            tmp_path)


def test_json_nested_past_the_recursion_limit(tmp_path):
    with pytest.raises(WorkflowError, match="nested too deeply"):
        read_workflow('{"a":' * 100_000 + "1" + "}" * 100_000)


@pytest.mark.parametrize("slot", ["x", "nan", 1.5, None, [0], -1, True])
def test_ui_format_link_with_a_non_integer_slot(tmp_path, slot):
    ui = {"nodes": [{"id": 1, "type": "ARModelLoader", "inputs": [], "outputs": [{"type": "AR_MODEL"}],
                     "widgets_values": ["emoji-var", "float32", "none", "cpu"]},
                    {"id": 2, "type": "ARClassCondition", "inputs": [{"name": "model", "link": 7}],
                     "widgets_values": ["red heart", 4.0, "linear", ""]}],
          "links": [[7, 1, slot, 2, 0, "AR_MODEL"]]}
    with pytest.raises(WorkflowError) as info:
        read_workflow(ui, default_registry())
    assert_user_error(info.value, "slot")


def test_ui_format_fields_of_the_wrong_shape(tmp_path):
    ui = {"nodes": [{"id": 1, "type": ["ARModelLoader"], "inputs": []}], "links": []}
    with pytest.raises(WorkflowError, match="malformed UI-format workflow"):
        read_workflow(ui, default_registry())


@pytest.mark.parametrize("node,name,value,needle", [
    ("5", "filename_prefix", "a" * 300, "at most 255 bytes"),
    ("5", "filename_prefix", "x/" + "é" * 200, "at most 255 bytes"),
    ("5", "filename_prefix", "a\ud800b", "lone surrogate"),
    ("5", "filename_prefix", "a\udc80b", "lone surrogate"),
    ("5", "filename_prefix", "line\nbreak", "control character"),
])
def test_output_names_the_filesystem_cannot_hold(tmp_path, node, name, value, needle):
    with pytest.raises(NodeExecutionError) as info:
        run(changed(node, name, value), tmp_path)
    assert_user_error(info.value, "filename_prefix", needle)
    assert not any((tmp_path / "out").rglob("*.png"))


@pytest.mark.parametrize("name,needle", [("b" * 300 + ".png", "at most 255 bytes"),
                                          ("a\ud800.png", "lone surrogate"),
                                          ("x" * 5000, "bytes long")])
def test_input_names_the_filesystem_cannot_hold(tmp_path, name, needle):
    wf = copy.deepcopy(BASE)
    wf["6"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    wf["5"]["inputs"]["images"] = ["6", 0]
    with pytest.raises(NodeExecutionError) as info:
        run(wf, tmp_path)
    assert_user_error(info.value, "node 6", needle)


def test_cuda_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(NodeExecutionError) as info:
        run(changed("1", "device", "cuda"), tmp_path)
    assert isinstance(info.value.original, UnsupportedError)
    assert_user_error(info.value, "node 1", "'device'", "no CUDA device")


def test_image_scale_crop_to_an_extreme_aspect_keeps_a_pixel():
    ctx = ExecutionContext("6", "ImageScale", Path("."), Path("."))
    (out,) = ImageScale.execute(ctx, image=torch.rand(1, 64, 64, 3), upscale_method="bilinear", width=8192,
                                height=48, crop="center")
    assert out.shape == (1, 48, 8192, 3) and torch.isfinite(out).all()
    (out,) = ImageScale.execute(ctx, image=torch.rand(1, 64, 64, 3), upscale_method="area", width=3, height=4000,
                                crop="center")
    assert out.shape == (1, 4000, 3, 3)


def test_image_scale_output_over_the_pixel_limit_is_refused_before_allocation(monkeypatch):
    monkeypatch.setenv("ARNODES_MAX_PIXELS", str(1024 * 1024))
    ctx = ExecutionContext("6", "ImageScale", Path("."), Path("."))
    with pytest.raises(LimitError, match="ARNODES_MAX_PIXELS"):
        ImageScale.execute(ctx, image=torch.rand(2, 8, 8, 3), upscale_method="bilinear", width=1024, height=1024,
                           crop="disabled")


@pytest.mark.parametrize("classes", ["red heart;" * 5000, "red heart," * 5000, "1;" * 65])
def test_class_list_over_the_batch_limit_is_refused_before_allocation(tmp_path, classes):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(NodeExecutionError) as info:
        run(changed("2", "classes", classes), tmp_path)
    assert isinstance(info.value.original, LimitError)
    assert_user_error(info.value, "node 2", "'classes'", "ARNODES_MAX_BATCH")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"


def test_classes_times_batch_size_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setenv("ARNODES_MAX_BATCH", "8")
    wf = changed("2", "classes", "red heart; sun; fire")
    wf["3"]["inputs"]["batch_size"] = 3
    with pytest.raises(NodeExecutionError) as info:
        run(wf, tmp_path)
    assert_user_error(info.value, "node 3", "batch of 9 images", "limit of 8")


def test_graph_size_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("ARNODES_MAX_NODES", "4")
    with pytest.raises(LimitError, match="5 nodes, more than the limit of 4"):
        run(BASE, tmp_path)


def test_bad_limit_setting_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ARNODES_MAX_BATCH", "lots")
    with pytest.raises(ArnodesError) as info:
        run(BASE, tmp_path)
    assert_user_error(info.value, "ARNODES_MAX_BATCH must be a positive integer, got 'lots'")


# --------------------------------------------------------------------------- CLI exit statuses

def test_cli_bad_input_is_exit_2(tmp_path, capsys):
    code = main(["run", str(tmp_path / "wf.json"), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and err.startswith("error:") and "internal" not in err


def test_cli_internal_error_is_exit_70_and_not_disguised(tmp_path, capsys, monkeypatch):
    def broken(cls, ctx, **inputs):
        return {}["no such key"]  # a bug inside a node
    monkeypatch.setattr(ARDecode, "execute", classmethod(broken))
    argv = ["generate", "--class", "red heart", "--device", "cpu", "--output-dir", str(tmp_path), "--quiet"]
    assert main(argv) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert not err.startswith("error:") and "internal error in node" in err and "KeyError" in err
    assert "Traceback" not in err and "--debug" in err
    assert main(["--debug", *argv]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "no such key" in err
    assert not list(tmp_path.glob("*.png"))


def test_cli_untyped_exception_outside_a_node_is_internal(tmp_path, capsys, monkeypatch):
    import arnodes.cli as cli

    monkeypatch.setattr(cli, "_registry", lambda: 1 / 0)
    assert main(["nodes"]) == EXIT_INTERNAL
    assert "internal error: ZeroDivisionError" in capsys.readouterr().err


def test_generation_whose_memory_estimate_exceeds_free_memory_is_refused(tmp_path, monkeypatch):
    from arnodes.engine import limits

    monkeypatch.setattr(limits, "available_bytes", lambda device="cpu": 1 << 20)  # 1 MiB free
    with pytest.raises(NodeExecutionError) as info:
        run(BASE, tmp_path)
    assert isinstance(info.value.original, LimitError)
    assert_user_error(info.value, "node 3", "ARGenerate (1 image(s)): needs about", "KV cache",
                      "of memory", "but only 0.00 GiB is available on cpu")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_generation_memory_estimate_grows_with_the_batch():
    from arnodes.engine.model_cache import default_cache
    from arnodes.engine.memory import working_set

    bundle = default_cache().get("emoji-var")
    one, eight = working_set(bundle, 1), working_set(bundle, 8)
    assert 0 < one.kv_cache < one.total < 1 << 30 and eight.total == 8 * one.total
