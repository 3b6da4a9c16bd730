"""ARModelLoader and ARClassCondition on the tiny fixture models of both families."""
from __future__ import annotations

import json

import pytest
from test_workflows import TINY_CLASSES, TINY_LLAMAGEN, TINY_VAR, tiny_models_dir

from arnodes.engine.conditioning import Conditioning
from arnodes.engine.errors import InvalidInputError, MissingFileError, UnknownNameError
from arnodes.graph import validate
from arnodes.graph.registry import default_registry
from arnodes.nodes.base import ExecutionContext
from arnodes.nodes.conditioning import ARClassCondition
from arnodes.nodes.loaders import ARModelLoader
from arnodes.nodes.types import ModelHandle, is_model_choice, model_choices


@pytest.fixture(autouse=True)
def _models_dir(monkeypatch):
    monkeypatch.setenv("ARNODES_MODELS_DIR", str(tiny_models_dir()))


@pytest.fixture
def ctx(tmp_path):
    return ExecutionContext("1", "X", tmp_path / "in", tmp_path / "out")


def load(ctx, name, **kw):
    args = dict(model=name, dtype="float32", quant="none", device="cpu") | kw
    return ARModelLoader.execute(ctx, **args)[0]


def test_choices_list_the_default_and_local_manifests_but_not_checkpoints_missing_from_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    choices = model_choices()
    assert choices[0] == "emoji-var" and "var-d16" not in choices and "llamagen-c2i-b-256" not in choices
    assert "emoji-raster" in choices  # the second bundled model (weights/emoji_raster.json)
    assert TINY_VAR in choices and TINY_LLAMAGEN in choices and "classes.json" not in choices
    assert ARModelLoader.SPEC.input("model").default == "emoji-var"
    workflow = {"1": {"class_type": "ARModelLoader",
                      "inputs": {"model": "var-d16", "dtype": "float32", "quant": "none", "device": "cpu"}}}
    (problem,) = validate(workflow, default_registry())
    assert "released checkpoint that is not on disk" in problem.message, problem.message
    assert "huggingface.co/FoundationVision/var" in problem.message and str(tiny_models_dir()) in problem.message
    unknown = dict(workflow, **{"1": {**workflow["1"], "inputs": {**workflow["1"]["inputs"], "model": "nope"}}})
    assert "not one of the allowed values" in validate(unknown, default_registry())[0].message
    from arnodes.engine.registry import REGISTRY
    entry = REGISTRY["var-d16"]
    models = tmp_path / "models"
    models.mkdir()
    for name in (entry.tokenizer_file, entry.generator_file):
        (models / name).write_bytes(b"")  # present (the loader reads them; the list only looks)
    monkeypatch.setenv("ARNODES_MODELS_DIR", str(models))
    assert "var-d16" in model_choices() and "var-d30" not in model_choices()


def test_the_one_model_check_agrees_with_the_list(tmp_path, monkeypatch):
    """Validation asks about one model (is_model_choice) instead of listing all; both must agree."""
    from arnodes.engine.registry import REGISTRY
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    entry = REGISTRY["var-d16"]
    models = tmp_path / "models"
    models.mkdir()
    for name in (entry.tokenizer_file, entry.generator_file):
        (models / name).write_bytes(b"")
    (models / "mine.json").write_text((tiny_models_dir() / TINY_VAR).read_text())
    (models / "notes.json").write_text('{"not": "a manifest"}')
    (models / ".hidden.json").write_text((tiny_models_dir() / TINY_VAR).read_text())
    (models / "folder.json").mkdir()
    monkeypatch.setenv("ARNODES_MODELS_DIR", str(models))
    choices = model_choices()
    assert {"emoji-var", "emoji-raster", "var-d16", "mine.json"} <= set(choices)
    candidates = set(choices) | set(REGISTRY) | {"notes.json", "nope", "../mine.json", str(models / "mine.json"),
                                                 ".hidden.json", "folder.json", "mine", ""}
    for name in sorted(candidates):
        assert is_model_choice(name) == (name in choices), name
    workflow = {"1": {"class_type": "ARModelLoader",
                      "inputs": {"model": "var-d30", "dtype": "float32", "quant": "none", "device": "cpu"}}}
    assert "released checkpoint that is not on disk" in validate(workflow, default_registry())[0].message


def test_validation_asks_about_the_one_value_when_a_combo_can():
    """A dynamic COMBO with ``is_choice`` is not listed to validate a value it accepts."""
    from arnodes.nodes.base import COMBO, InputSpec, widget_value_problem

    def unlistable() -> list[str]:
        raise OSError("listing is slow / unavailable")
    spec = InputSpec("model", COMBO, default="a", choices=unlistable, is_choice=lambda v: v == "a")
    assert widget_value_problem(spec, "a") is None
    assert widget_value_problem(spec, "b") == ("bad_choice", "could not list the allowed values: listing is slow / "
                                                              "unavailable")


@pytest.mark.parametrize("name,family", [(TINY_VAR, "var"), (TINY_LLAMAGEN, "llamagen")])
def test_loader_returns_a_cheap_handle(ctx, name, family):
    handle = load(ctx, name, device="auto")
    assert isinstance(handle, ModelHandle) and hash(handle) == hash(load(ctx, name, device="auto"))
    assert handle.device in ("cpu", "cuda") and handle.name.endswith(name)
    with handle.use() as bundle:
        assert bundle.family == family and bundle.image_size == 64


def test_loader_missing_file_fails_at_the_loader(ctx, tmp_path, monkeypatch):
    manifest = json.loads((tiny_models_dir() / TINY_VAR).read_text())
    manifest["generator"]["file"] = str(tmp_path / "gone.safetensors")
    manifest["classes"] = str(tiny_models_dir() / "classes.json")
    models = tmp_path / "models"
    models.mkdir()
    (models / "broken.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("ARNODES_MODELS_DIR", str(models))
    with pytest.raises(MissingFileError, match="gone.safetensors"):
        load(ctx, "broken.json")
    with pytest.raises(MissingFileError, match="not found"):
        load(ctx, "var-d16")  # a released checkpoint that is not downloaded (tests are offline)
    with pytest.raises(InvalidInputError, match="'quant'"):
        load(ctx, TINY_VAR, quant="int3")


def test_workflow_with_unknown_model_is_refused_before_running():
    wf = {"1": {"class_type": "ARModelLoader", "inputs": {"model": "no-such-model"}}}
    problems = validate(wf, default_registry())
    assert [(p.type, p.input_name) for p in problems] == [("bad_choice", "model")]


@pytest.mark.parametrize("name", [TINY_VAR, TINY_LLAMAGEN])
def test_class_condition_names_ids_and_negative(ctx, name):
    model = load(ctx, name)
    (cond,) = ARClassCondition.execute(ctx, model=model, classes="red heart, 3; Cat Face", cfg=2.5,
                                       cfg_schedule="constant", negative="")
    assert isinstance(cond, Conditioning)
    assert cond.class_ids == (0, 3, 2) and cond.cfg == 2.5 and cond.schedule == "constant"
    assert cond.negative_class_ids is None and cond.class_names == ("red heart", "red apple", "cat face")
    (neg,) = ARClassCondition.execute(ctx, model=model, classes="sun; pizza", cfg=4.0, cfg_schedule="linear",
                                      negative="fire")
    assert neg.negative_class_ids == (TINY_CLASSES.index("fire"),) * 2


def test_class_condition_errors_name_the_input(ctx):
    model = load(ctx, TINY_VAR)
    run = dict(model=model, cfg=4.0, cfg_schedule="linear", negative="")
    with pytest.raises(UnknownNameError, match=r"input 'classes': unknown class 'red hart'.*red heart"):
        ARClassCondition.execute(ctx, classes="red hart", **run)
    with pytest.raises(InvalidInputError, match="input 'classes'.*out of range"):
        ARClassCondition.execute(ctx, classes="12", **run)
    with pytest.raises(InvalidInputError, match="input 'classes': no class"):
        ARClassCondition.execute(ctx, classes=" ; ", **run)
    with pytest.raises(InvalidInputError, match="input 'negative'"):
        ARClassCondition.execute(ctx, classes="sun, pizza, fire", **(run | {"negative": "star, rainbow"}))
    with pytest.raises(InvalidInputError, match="input 'cfg'"):
        ARClassCondition.execute(ctx, classes="sun", **(run | {"cfg": 31.0}))
    with pytest.raises(InvalidInputError, match="ARModelLoader"):
        ARClassCondition.execute(ctx, classes="sun", **(run | {"model": "tiny"}))
    with pytest.raises(UnknownNameError, match="input 'style': unknown style 'comic'.*known: any"):
        ARClassCondition.execute(ctx, classes="sun", **(run | {"style": "comic"}))
    (cond,) = ARClassCondition.execute(ctx, classes="sun", **(run | {"style": "Any"}))
    assert cond.style_ids is None


def test_class_picker_lists_known_names_and_feeds_class_condition(ctx, tmp_path):
    from arnodes.graph import Executor, LRUCache
    from arnodes.nodes.conditioning import ARClassPicker

    choices = ARClassPicker.SPEC.inputs[0].choice_list()
    assert {"red heart", "cat face", "golden retriever", "tench"} <= set(choices)  # bundled + ImageNet names
    assert len(choices) == len(set(choices))
    (text,) = ARClassPicker.execute(ctx, class_name="red heart", more="cat face; 3")
    (cond,) = ARClassCondition.execute(ctx, model=load(ctx, TINY_VAR), classes=text, cfg=1.0, cfg_schedule="linear",
                                       negative="")
    assert cond.class_names == ("red heart", "cat face", "red apple")
    # in a graph: the picker's output wired into the condition's classes input
    wf = {"1": {"class_type": "ARModelLoader", "inputs": {"model": TINY_VAR}},
          "2": {"class_type": "ARClassPicker", "inputs": {"class_name": "cat face"}},
          "3": {"class_type": "ARClassCondition", "inputs": {"model": ["1", 0], "classes": ["2", 0], "cfg": 1.0,
                                                              "cfg_schedule": "linear"}}}
    assert validate(wf, default_registry()) == []
    result = Executor(default_registry(), LRUCache(8)).run(wf, input_dir=tmp_path / "in", output_dir=tmp_path / "out")
    assert result.outputs["3"][0].class_names == ("cat face",)
    problems = validate({"2": {"class_type": "ARClassPicker", "inputs": {"class_name": "no such"}}},
                        default_registry())
    assert [(p.type, p.input_name) for p in problems] == [("bad_choice", "class_name")]
