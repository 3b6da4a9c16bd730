"""The app's prompt boxes: a prompt (or a text-to-image model) makes every task build ARTextCondition
instead of ARClassCondition; class models keep their class picker. Mock runner, no weights."""
from __future__ import annotations

import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web-app tests need the [ui] extra")

import ui_support  # noqa: E402  (tests/ is on sys.path, see tests/conftest.py)
from arnodes.ui import app, callbacks  # noqa: E402

SAMPLER = (7, False, 4.0, 0, 1.0, 1.0)
ENGINE = ("float32", "none", "cpu")


@pytest.fixture
def mock(tmp_path):
    return ui_support.MockRunner(tmp_path / "work")


@pytest.fixture
def cb(mock):
    return callbacks.Callbacks(mock)


def conditions(workflow: dict) -> dict[str, dict]:
    return {n["class_type"]: n["inputs"] for n in workflow.values()
            if n["class_type"] in ("ARTextCondition", "ARClassCondition")}


def every_task(cb, src, prompt: str, negative: str = "") -> None:
    editor = {"background": src, "layers": [Image.new("RGBA", src.size, (255, 255, 255, 255))], "composite": None}
    cb.generate("mock-model", [], *SAMPLER, 2, "any", *ENGINE, "plain", prompt, negative)
    cb.inpaint("mock-model", editor, [], *SAMPLER, "any", *ENGINE, "plain", prompt, negative)
    cb.outpaint("mock-model", editor, [], 0, 0, 16, 0, 4, *SAMPLER, "any", *ENGINE, "plain", prompt, negative)
    cb.edit("mock-model", src, [], 10, 10, 60, 60, False, *SAMPLER, "any", *ENGINE, prompt, negative)
    cb.super_resolve("mock-model", src, [], 2, *SAMPLER, "any", *ENGINE, prompt, negative)
    cb.control("mock-model", src, [], "none", 1.0, *SAMPLER, "any", *ENGINE, prompt, negative)
    cb.variation("mock-model", src, [], 0.5, *SAMPLER, "any", *ENGINE, prompt, negative)


def test_a_prompt_makes_every_task_text_conditioned(cb, mock):
    src = Image.new("RGB", (64, 64), (10, 200, 30))
    every_task(cb, src, "  a red fox in the snow ", "blurry")
    assert len(mock.workflows) == 7
    for wf in mock.workflows:
        conds = conditions(wf)
        assert list(conds) == ["ARTextCondition"]
        assert conds["ARTextCondition"]["prompt"] == "a red fox in the snow"
        assert conds["ARTextCondition"]["negative"] == "blurry" and conds["ARTextCondition"]["cfg"] == 4.0
    gen = next(n for n in mock.workflows[0].values() if n["class_type"] == "ARGenerate")
    assert gen["inputs"]["batch_size"] == 2


def test_classes_stay_for_class_models_and_text_models_ask_for_a_prompt(cb, mock):
    cb.generate("mock-model", ["red heart"], *SAMPLER, 1, "any", *ENGINE, "plain", "", "")
    assert list(conditions(mock.workflows[-1])) == ["ARClassCondition"]
    mock.text_models = ("mock-model",)
    with pytest.raises(gr.Error, match="text-to-image model: write a prompt"):
        cb.generate("mock-model", ["red heart"], *SAMPLER, 1)
    cb.generate("mock-model", [], *SAMPLER, 1, "any", *ENGINE, "plain", "w1 w2")
    assert list(conditions(mock.workflows[-1])) == ["ARTextCondition"]


def test_every_task_tab_has_prompt_boxes_wired(mock):
    demo = app.build_app(mock)
    api = demo.get_api_info()["named_endpoints"]
    for endpoint in ("/generate", "/inpaint", "/outpaint", "/edit", "/super_resolve", "/control", "/variation"):
        params = api[endpoint]["parameters"]
        names = [p["parameter_name"] for p in params]
        i = names.index("prompt")
        assert names[i:i + 2] == ["prompt", "negative_prompt"], endpoint
        assert all(p["parameter_default"] == "" for p in params[i:i + 2])
        # API callers that predate the boxes (or the draft controls after them) still work
        assert all(p["parameter_has_default"] for p in params[i:]), endpoint
        assert names[i + 2:] in ([], ["draft_window", "draft_init", "group_mass"]), endpoint


def test_the_real_runner_knows_text_models_without_loading_them(tmp_path, monkeypatch):
    from text_support import TINY_C2I, TINY_T2I, tiny_text_models_dir

    monkeypatch.setenv("ARNODES_MODELS_DIR", str(tiny_text_models_dir()))
    runner = callbacks.WorkflowRunner(tmp_path / "work")
    assert runner.takes_prompt(TINY_T2I) and not runner.takes_prompt(TINY_C2I)
    assert runner.takes_prompt("llamagen-t2i-xl-256") and not runner.takes_prompt("nonexistent")
    assert runner.class_choices(TINY_T2I) == [] and len(runner.class_choices(TINY_C2I)) == 10
    assert runner.class_choices("llamagen-t2i-xl-256") == []


def test_a_prompt_with_no_class_on_the_default_class_model_is_drawn_by_the_text_model(cb, mock, monkeypatch):
    """As `arnodes generate --prompt` without --model: emoji-var picked, no class, a prompt -> emoji-text;
    a class picked (or another model) keeps the model the user chose."""
    monkeypatch.setattr(mock, "model_choices", lambda: ["emoji-var", "emoji-text"])
    loaders = lambda: [n["inputs"]["model"] for n in mock.workflows[-1].values()  # noqa: E731
                       if n["class_type"] == "ARModelLoader"]
    cb.generate("emoji-var", [], *SAMPLER, 1, "any", *ENGINE, "plain", "red heart", "")
    assert loaders() == ["emoji-text"] and list(conditions(mock.workflows[-1])) == ["ARTextCondition"]
    cb.generate("emoji-var", ["red heart"], *SAMPLER, 1, "any", *ENGINE, "plain", "", "")
    assert loaders() == ["emoji-var"] and list(conditions(mock.workflows[-1])) == ["ARClassCondition"]
    cb.generate("mock-model", [], *SAMPLER, 1, "any", *ENGINE, "plain", "red heart", "")
    assert loaders() == ["mock-model"]


def test_the_text_to_image_example_runs_in_the_app(tmp_path):
    """workflows/text_to_image.json uploaded to the Workflow tab runs on the bundled emoji-text model."""
    import numpy as np

    from arnodes.ui.presets import example_workflows

    (path,) = [p for p in example_workflows() if p.endswith("text_to_image.json")]
    real = callbacks.Callbacks(callbacks.WorkflowRunner(tmp_path / "work"))
    rows, summary = real.workflow_load(path)
    assert ["2", "ARTextCondition", "prompt", "smiling cat, twemoji style"] in rows
    files, _ = real.workflow_run(path, rows, None)
    (png,) = files
    img = np.asarray(Image.open(png).convert("RGB")).astype(float)
    assert img.shape == (64, 64, 3) and img.std() > 10 and img[:4, :4].mean() > 200
