"""The app builds and wires up with a mock runner: no weights, no model loading, no side effects;
callbacks turn widget values into the node graphs the CLI and ComfyUI run, and bad input becomes a
readable `gr.Error`.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web-app tests need the [ui] extra")

import ui_support  # noqa: E402  (tests/ is on sys.path, see tests/conftest.py)
from arnodes.ui import app, callbacks  # noqa: E402

TASK_ENDPOINTS = {"generate", "inpaint", "outpaint", "edit", "super_resolve", "control", "variation",
                  "workflow_load", "workflow_run", "models", "model_load", "model_unload", "cancel"}


@pytest.fixture
def mock(tmp_path):
    return ui_support.MockRunner(tmp_path / "work")


@pytest.fixture
def cb(mock):
    return callbacks.Callbacks(mock)


def sampler(seed: int = 7) -> tuple:
    return (seed, False, 4.0, 0, 1.0, 1.0)


def test_build_app_with_a_mock_runner_has_every_endpoint_and_loads_nothing(mock):
    from arnodes.engine.model_cache import default_cache

    before = default_cache().info()
    demo = app.build_app(mock)
    assert isinstance(demo, gr.Blocks)
    names = {name.lstrip("/") for name in demo.get_api_info()["named_endpoints"]}
    assert TASK_ENDPOINTS <= names
    assert mock.workflows == [] and default_cache().info() == before
    assert demo._queue.max_size == app.presets.QUEUE_SIZE


SIDE_EFFECTS = {"launch", "serve", "build_app", "parse_args", "parse_known_args", "queue", "Blocks",
                "WorkflowRunner", "default_registry", "default_cache", "load_bundle", "mkdtemp", "Client"}


@pytest.mark.parametrize("module", ["app.py", "callbacks.py", "presets.py", "theme.py"])
def test_ui_modules_do_nothing_at_import(module):
    """Module level holds imports, constants and definitions; starting things sits behind the __main__
    guard (STYLE.md item 15)."""
    tree = ast.parse((Path(app.__file__).parent / module).read_text())
    for node in tree.body:
        if isinstance(node, ast.If):
            assert ast.unparse(node.test) == "__name__ == '__main__'", ast.unparse(node)[:80]
            continue
        assert isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Expr, ast.Assign,
                                 ast.AnnAssign)), ast.unparse(node)[:80]
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        calls = {getattr(n.func, "attr", getattr(n.func, "id", "")) for n in ast.walk(node) if isinstance(n, ast.Call)}
        assert not calls & SIDE_EFFECTS, f"{module}: {ast.unparse(node)[:80]}"


def test_generate_builds_the_cli_graph(cb, mock):
    gallery, files, seed = cb.generate("mock-model", ["red heart", "cat face"], *sampler(), 3)
    assert seed == 7 and len(gallery) == 1 and files == gallery
    (wf,) = mock.workflows
    by_class = {n["class_type"]: n["inputs"] for n in wf.values()}
    assert by_class["ARClassCondition"]["classes"] == "red heart; cat face"
    assert by_class["ARGenerate"]["seed"] == 7 and by_class["ARGenerate"]["batch_size"] == 3
    assert by_class["SaveImage"]["filename_prefix"] == "arnodes_generate"
    assert by_class["ARModelLoader"]["model"] == "mock-model"
    assert by_class["ARClassCondition"]["style"] == "any"


def test_style_control_reaches_every_task_graph(cb, mock, tmp_path):
    src = Image.open(ui_support.sample_image(tmp_path / "s.png"))
    cb.generate("mock-model", ["red heart"], *sampler(), 1, "twemoji")
    cb.edit("mock-model", src, ["sun"], 10, 10, 60, 60, False, *sampler(), "fluent-flat")
    cb.variation("mock-model", src, ["sun"], 0.5, *sampler(), "noto")
    styles = [n["inputs"]["style"] for wf in mock.workflows for n in wf.values()
              if n["class_type"] == "ARClassCondition"]
    assert styles == ["twemoji", "fluent-flat", "noto"]


def test_a_run_shows_its_decode_statistics(cb, mock, monkeypatch):
    """After a generation the app says how many model forwards it took (what sjd / gsd saved)."""
    shown: list[str] = []
    monkeypatch.setattr(callbacks.gr, "Info", lambda message, *a, **k: shown.append(message))
    plain_run = mock.run

    def run_with_stats(workflow, on_event=None, cancel=None, extra_pnginfo=None, ui_out=None):
        gen_id = next(n for n, node in workflow.items() if node["class_type"] == "ARGenerate")
        ui_out[gen_id] = {"stats": [{"forwards": 21, "decode": "sjd", "tokens": 64, "seconds": 0.25,
                                     "drafts": "store"}]}
        return plain_run(workflow, on_event, cancel, extra_pnginfo)
    monkeypatch.setattr(mock, "run", run_with_stats)
    cb.generate("mock-model", ["red heart"], *sampler(), 1, "any", "float32", "none", "cpu", "sjd")
    assert shown == ["sjd decoding (store drafts): 21 model forwards for 64 tokens in 0.25 s"]
    assert callbacks.decode_summaries({"4": {"images": ["x.png"]}}) == []


def test_engine_menus_reach_every_task_graph(cb, mock, tmp_path):
    """Precision, quantization, device and decoding are the page's menus, not hard-coded."""
    src = Image.open(ui_support.sample_image(tmp_path / "s.png"))
    cb.generate("mock-model", ["red heart"], *sampler(), 1, "any", "bfloat16", "int8", "cpu", "gsd", "", "", 4,
                "above", 0.7)
    cb.super_resolve("mock-model", src, ["sun"], 2, *sampler(), "any", "float16", "int4-g32", "auto")
    cb.control("mock-model", src, ["sun"], "none", 1.0, *sampler(), "any", "float32", "none", "cpu")
    loaders = [n["inputs"] for wf in mock.workflows for n in wf.values() if n["class_type"] == "ARModelLoader"]
    assert [(x["dtype"], x["quant"], x["device"]) for x in loaders] == [
        ("bfloat16", "int8", "cpu"), ("float16", "int4-g32", "auto"), ("float32", "none", "cpu")]
    decoding = [{k: n["inputs"][k] for k in ("decode", "draft_window", "draft_init", "group_mass")}
                for n in mock.workflows[0].values() if n["class_type"] == "ARGenerate"]
    assert decoding == [{"decode": "gsd", "draft_window": 4, "draft_init": "above", "group_mass": 0.7}]
    with pytest.raises(gr.Error, match="precision 'float8' is not one of float32"):
        cb.generate("mock-model", ["red heart"], *sampler(), 1, "any", "float8")


@pytest.mark.parametrize("control_type", ["canny", "none"])
def test_control_graph_preprocesses_and_shows_the_map(cb, mock, tmp_path, control_type):
    src = Image.open(ui_support.sample_image(tmp_path / "s.png"))
    cb.control("mock-model", src, ["sun"], control_type, 1.5, *sampler())
    wf = mock.workflows[0]
    by_class = {n["class_type"]: n["inputs"] for n in wf.values()}
    assert ("Canny" in by_class) == (control_type == "canny")
    assert by_class["ARControl"]["strength"] == 1.5 and by_class["ARControl"]["control_type"] == "canny"
    saved = sorted(n["inputs"]["filename_prefix"] for n in wf.values() if n["class_type"] == "SaveImage")
    assert saved == ["arnodes_control", "arnodes_control_input"]


def test_random_seed_is_drawn_and_returned(cb, mock):
    _, _, seed = cb.generate("mock-model", ["red heart"], 0, True, 4.0, 0, 1.0, 1.0, 1)
    gen = [n for n in mock.workflows[0].values() if n["class_type"] == "ARGenerate"][0]
    assert gen["inputs"]["seed"] == seed


def test_inpaint_saves_image_and_painted_mask_as_inputs(cb, mock, tmp_path):
    src = Image.open(ui_support.sample_image(tmp_path / "s.png"))
    layer = Image.open(ui_support.stroke_layer(tmp_path / "l.png"))
    cb.inpaint("mock-model", {"background": src, "layers": [layer], "composite": None}, ["sun"], *sampler())
    wf = mock.workflows[0]
    mask_node = [n for n in wf.values() if n["class_type"] == "LoadImageMask"][0]
    mask = Image.open(mock.input_dir / mask_node["inputs"]["image"])
    assert mask.getpixel((20, 20)) == 255 and mask.getpixel((2, 2)) == 0
    assert any(n["class_type"] == "ARInpaint" for n in wf.values())


@pytest.mark.parametrize("call, message", [
    (lambda cb, img: cb.inpaint("mock-model", {"background": img, "layers": [], "composite": None}, ["sun"],
                                *sampler()), "paint over the area"),
    (lambda cb, img: cb.inpaint("mock-model", {"background": None, "layers": [], "composite": None}, ["sun"],
                                *sampler()), "upload an image"),
    (lambda cb, img: cb.edit("mock-model", img, ["sun"], 60, 10, 40, 90, False, *sampler()), "region is empty"),
    (lambda cb, img: cb.outpaint("mock-model", {"background": img, "layers": []}, ["sun"], 0, 0, 0, 0, 8,
                                 *sampler()), "at least one side"),
    (lambda cb, img: cb.generate("mock-model", [], *sampler(), 1), "pick at least one class"),
    (lambda cb, img: cb.super_resolve("mock-model", None, ["sun"], 2, *sampler()), "upload an image"),
])
def test_bad_input_is_a_readable_gr_error(cb, mock, tmp_path, call, message):
    img = Image.open(ui_support.sample_image(tmp_path / "s.png"))
    with pytest.raises(gr.Error, match=message):
        call(cb, img)
    assert mock.workflows == []


def test_mask_of_another_size_is_refused(cb, tmp_path):
    src = Image.open(ui_support.sample_image(tmp_path / "s.png", 64))
    layer = Image.open(ui_support.stroke_layer(tmp_path / "l.png", 32, (0, 0, 8, 8)))
    with pytest.raises(gr.Error, match="painted mask is 32x32"):
        cb.inpaint("mock-model", {"background": src, "layers": [layer]}, ["sun"], *sampler())


def test_unexpected_exceptions_become_one_line_errors():
    @callbacks.readable_errors
    def broken():
        raise ZeroDivisionError("boom")

    with pytest.raises(gr.Error, match=r"Internal error \(ZeroDivisionError\): boom"):
        broken()


def test_a_bug_inside_a_node_is_an_internal_error_not_bad_input():
    from arnodes.engine.errors import InvalidInputError
    from arnodes.graph import NodeExecutionError

    @callbacks.readable_errors
    def node_bug():
        raise NodeExecutionError("3", "ARGenerate", KeyError("oops"))

    @callbacks.readable_errors
    def bad_input():
        raise NodeExecutionError("3", "ARGenerate", InvalidInputError("input 'seed' is negative"))

    with pytest.raises(gr.Error, match=r"Internal error in .*KeyError.*bug in arnodes"):
        node_bug()
    with pytest.raises(gr.Error, match=r"failed: input 'seed' is negative") as info:
        bad_input()
    assert "Internal" not in str(info.value)


def test_cancel_board_sets_only_its_own_session():
    board = callbacks.CancelBoard()
    a, b = board.start("a"), board.start("b")
    assert board.cancel("a") and a.is_set() and not b.is_set()
    board.finish("a", a)
    assert not board.cancel("a")


def test_workflow_upload_lists_values_and_run_applies_edits(cb, mock, tmp_path):
    from arnodes.graph import GraphBuilder

    g = GraphBuilder()
    m = g.node("ARModelLoader", model="emoji-var", dtype="float32", quant="none", device="auto")
    c = g.node("ARClassCondition", model=m.out(0), classes="red heart", cfg=4.0, cfg_schedule="linear", negative="")
    t = g.node("ARGenerate", model=m.out(0), cond=c.out(0), seed=1, top_k=0, top_p=1.0, temperature=1.0,
               batch_size=1, more_smooth=False)
    d = g.node("ARDecode", model=m.out(0), tokens=t.out(0), scales=0)
    g.node("SaveImage", images=d.out(0), filename_prefix="x")
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(g.build()))
    rows, summary = cb.workflow_load(str(path))
    assert "5 nodes" in summary and ["3", "ARGenerate", "seed", "1"] in rows
    rows = [r if r[2] != "seed" else [*r[:3], "42"] for r in rows]
    cb.workflow_run(str(path), rows, None)
    assert mock.workflows[0]["3"]["inputs"]["seed"] == 42


def test_bad_workflow_file_is_a_readable_error(tmp_path):
    """The real runner validates before anything runs, so this needs no weights."""
    real = callbacks.Callbacks(callbacks.WorkflowRunner(tmp_path / "work"))
    path = tmp_path / "bad.json"
    path.write_text('{"1": {"class_type": "NoSuchNode", "inputs": {}}}')
    with pytest.raises(gr.Error, match="NoSuchNode"):
        real.workflow_run(str(path), None, None)
    path.write_text("not json")
    with pytest.raises(gr.Error):
        real.workflow_load(str(path))
    with pytest.raises(gr.Error, match="upload a workflow"):
        real.workflow_load(None)


def test_send_to_uses_the_selected_gallery_image(cb):
    gallery = [("/tmp/a.png", None), ("/tmp/b.png", None)]
    assert cb.send_to(gallery, 1) == "/tmp/b.png"
    assert cb.send_to_editor(gallery, 0)["background"] == "/tmp/a.png"
    with pytest.raises(gr.Error, match="Nothing to send"):
        cb.send_to([], 0)
