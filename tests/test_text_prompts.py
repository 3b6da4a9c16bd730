"""Text prompts end to end on a tiny text-to-image model (tests/text_support.py): the model's text-encoder
slot, ARTextCondition and the task nodes under it, prompt caching, the wrong kind of condition, the CLI's
--prompt with a PNG that replays, the registry's released t2i checkpoints, and the ComfyUI pack."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import text_support
from arnodes.cli import main
from arnodes.engine.errors import ArnodesError, CheckpointError, InvalidInputError, MissingFileError, UnsupportedError
from arnodes.engine.loader import load_bundle, load_manifest
from arnodes.engine.text.encoders import TEXT_ENCODER_KINDS, PromptEncoder
from arnodes.nodes.base import ExecutionContext
from arnodes.nodes.conditioning import ARClassCondition, ARTextCondition
from arnodes.nodes.control import ARControl
from arnodes.nodes.edit import AREdit, ARVariation
from arnodes.nodes.generate import ARGenerate
from arnodes.nodes.inpaint import ARInpaint, AROutpaint
from arnodes.nodes.loaders import ARModelLoader
from arnodes.nodes.masks import ARRegionMask
from arnodes.nodes.super_resolve import ARSuperResolve
from arnodes.nodes.tokenize import ARDecode
from text_support import TINY_C2I, TINY_T2I, tiny_text_models_dir

S = dict(seed=5, top_k=0, top_p=1.0, temperature=1.0)


@pytest.fixture()
def models_dir(monkeypatch):
    path = tiny_text_models_dir()
    monkeypatch.setenv("ARNODES_MODELS_DIR", str(path))
    return path


@pytest.fixture()
def ctx(models_dir):
    return ExecutionContext("1", "X", models_dir, models_dir)


def loader(ctx, name: str):
    return ARModelLoader.execute(ctx, model=name, dtype="float32", quant="none", device="cpu")[0]


def cached_bundle(models_dir, name: str = TINY_T2I):
    from arnodes.engine.model_cache import default_cache
    return default_cache().get(str(models_dir / name), device="cpu")


# ---- the text-encoder slot of a loaded model --------------------------------------------------------------
def test_a_text_to_image_manifest_carries_its_encoder(models_dir):
    bundle = load_manifest(models_dir / TINY_T2I)
    assert bundle.takes_text and bundle.classes is None
    assert isinstance(bundle.text_encoder, PromptEncoder) and bundle.text_encoder.kind == "t5"
    assert bundle.text_encoder.dim == bundle.generator.config.caption_dim == 32
    encoder_bytes = sum(p.numel() * p.element_size() for p in bundle.text_encoder.module.parameters())
    assert encoder_bytes > 0 and bundle.resident_bytes() > encoder_bytes
    c2i = load_manifest(models_dir / TINY_C2I)
    assert not c2i.takes_text and c2i.text_encoder is None and len(c2i.classes) == 10


def write_manifest(tmp_path, name: str, **changes) -> str:
    data = {**text_support.t2i_manifest(str(tiny_text_models_dir() / "tiny_t5_tokenizer.json")), **changes}
    data = {k: v for k, v in data.items() if v is not None}
    (tmp_path / name).write_text(json.dumps(data))
    return str(tmp_path / name)


def test_a_manifests_text_encoder_is_checked_against_its_generator(tmp_path):
    c2i = text_support.c2i_manifest()
    t2i = text_support.t2i_manifest()
    with pytest.raises(CheckpointError, match="no 'text_encoder'"):
        load_manifest(write_manifest(tmp_path, "a.json", text_encoder=None))
    with pytest.raises(CheckpointError, match="generator is class-conditional"):
        load_manifest(write_manifest(tmp_path, "b.json", generator=c2i["generator"], classes=None))
    with pytest.raises(CheckpointError, match="unknown text encoder kind 'clip'.*t5"):
        load_manifest(write_manifest(tmp_path, "c.json", text_encoder={"kind": "clip"}))
    with pytest.raises(CheckpointError, match="unknown fields"):
        load_manifest(write_manifest(tmp_path, "d.json", text_encoder={**t2i["text_encoder"], "layers": 3}))
    with pytest.raises(MissingFileError, match="nowhere.json"):
        load_manifest(write_manifest(tmp_path, "e.json",
                                     text_encoder={**t2i["text_encoder"], "tokenizer": str(tmp_path / "nowhere.json")}))


def test_a_new_encoder_kind_is_one_module_and_one_row(tmp_path, monkeypatch):
    """text_support's "hash" kind: registered by one table row, it loads, checks its width and generates."""
    monkeypatch.setitem(TEXT_ENCODER_KINDS, "hash", "text_support")
    bundle = load_manifest(write_manifest(tmp_path, "hash.json", text_encoder={"kind": "hash", "dim": 32}))
    assert bundle.text_encoder.kind == "hash" and bundle.takes_text
    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine.tasks import RunSettings, generate_images
    img = generate_images(bundle, Conditioning(text=bundle.text_encoder.encode(["a red fox"]), cfg=4.0),
                          RunSettings(seed=1))
    assert img.shape == (1, 3, 64, 64)
    with pytest.raises(CheckpointError, match="16 wide.*caption_dim 32"):
        load_manifest(write_manifest(tmp_path, "narrow.json", text_encoder={"kind": "hash", "dim": 16}))


def test_the_same_prompt_is_encoded_once(models_dir, monkeypatch):
    """Per prompt: a second node, a changed seed, or the negative of another run reuse the encoding."""
    from arnodes.graph import Executor, GraphBuilder
    from arnodes.graph.registry import default_registry

    encoder = cached_bundle(models_dir).text_encoder
    encoder.clear()
    calls: list[list[str]] = []
    inner = encoder.encoder.encode
    monkeypatch.setattr(encoder.encoder, "encode", lambda prompts: (calls.append(list(prompts)), inner(prompts))[1])

    def workflow(seed: int, negative: str = "") -> dict:
        g = GraphBuilder()
        m = g.node("ARModelLoader", model=TINY_T2I, dtype="float32", quant="none", device="cpu")
        c = g.node("ARTextCondition", model=m.out(0), prompt="w1 w2 w3", cfg=4.0, negative=negative)
        g.node("ARGenerate", model=m.out(0), cond=c.out(0), batch_size=1, more_smooth=False, **(S | {"seed": seed}))
        return g.build()

    executor = Executor(default_registry())
    first = executor.run(workflow(1), input_dir=models_dir, output_dir=models_dir)
    again = executor.run(workflow(2), input_dir=models_dir, output_dir=models_dir)
    assert calls == [["w1 w2 w3"]]
    assert "2" in first.executed and "2" in again.cached  # the executor's cache: the node did not run again
    Executor(default_registry()).run(workflow(3), input_dir=models_dir, output_dir=models_dir)  # a fresh executor
    assert calls == [["w1 w2 w3"]] and encoder.encoded == 1
    Executor(default_registry()).run(workflow(3, negative="w7"), input_dir=models_dir, output_dir=models_dir)
    assert calls == [["w1 w2 w3"], ["w7"]]  # only the new negative prompt ran


# ---- the nodes -------------------------------------------------------------------------------------------
def test_every_task_node_runs_under_a_text_condition(ctx):
    model = loader(ctx, TINY_T2I)
    (cond,) = ARTextCondition.execute(ctx, model=model, prompt="w1 w2 w3", cfg=4.0, negative="w9")
    assert cond.text is not None and cond.text.prompts == ("w1 w2 w3",) and cond.text.negative is not None
    result = ARGenerate.execute(ctx, model=model, cond=cond, batch_size=2, more_smooth=False, **S)
    (tokens,) = result.outputs
    assert tokens.batch == 2 and result.ui["stats"][0]["forwards"] > 0
    (image,) = ARDecode.execute(ctx, model=model, tokens=tokens, scales=0)
    assert image.shape == (2, 64, 64, 3) and image.std() > 0.02
    mask = ARRegionMask.execute(None, image=image, left=0.25, top=0.25, right=0.75, bottom=0.75, invert=False)[0]
    keep = mask[0] == 0
    (inpainted,) = ARInpaint.execute(ctx, model=model, cond=cond, image=image, mask=mask, keep_unmasked=True, **S)
    assert inpainted.shape == image.shape and torch.equal(inpainted[:, keep], image[:, keep])
    (edited,) = AREdit.execute(ctx, model=model, image=image[:1], mask=mask[:1], cond=cond, **S)
    assert edited.shape == (1, 64, 64, 3) and torch.equal(edited[0][keep], image[0][keep])
    (wider,) = AROutpaint.execute(ctx, model=model, cond=cond, image=image[:1], left=16, top=0, right=0, bottom=0,
                                  feathering=4, **S)
    assert wider.shape == (1, 64, 80, 3)
    (varied,) = ARVariation.execute(ctx, model=model, cond=cond, image=image[:1], strength=0.5, **S)
    assert varied.shape == (1, 64, 64, 3)
    (up,) = ARSuperResolve.execute(ctx, model=model, cond=cond, image=image[:1, ::2, ::2], scale=2, **S)
    assert up.shape == (1, 64, 64, 3)


def test_different_prompts_draw_different_images_and_the_same_prompt_the_same(ctx):
    model = loader(ctx, TINY_T2I)

    def draw(prompt: str) -> torch.Tensor:
        (cond,) = ARTextCondition.execute(ctx, model=model, prompt=prompt, cfg=4.0)
        (tokens,) = ARGenerate.execute(ctx, model=model, cond=cond, batch_size=1, more_smooth=False, **S).outputs
        return tokens.grids[0]

    a, b = draw("w1 w2 w3"), draw("w40 w41 w42 w43 w44")
    assert not torch.equal(a, b) and torch.equal(a, draw("w1 w2 w3"))


def test_control_under_a_text_condition_is_refused_clearly(ctx, tmp_path, monkeypatch):
    """ARControl takes a text condition like any task node; a ControlAR adapter on a text-to-image model is
    not supported yet, and says so (a typed error, not a crash)."""
    from test_workflows import REFERENCE

    gpt = str(REFERENCE / "controlar" / "tiny_a" / "gpt.safetensors")
    ccfg = json.loads((REFERENCE / "controlar" / "tiny_a" / "config.json").read_text())
    control = {"canny": {"kind": "controlar", "file": gpt, "preprocessor": {"type": "canny"},
                         "config": {"dim": 48, "n_layer": 6, "block_size": 16,
                                    "encoder_config": ccfg["adapter"]["vit_config"]}}}
    path = write_manifest(tmp_path, "t2i-control.json", controls=control)
    model = loader(ctx, path)
    (cond,) = ARTextCondition.execute(ctx, model=model, prompt="w1", cfg=4.0)
    with pytest.raises(UnsupportedError, match="text-to-image"):
        ARControl.execute(ctx, model=model, cond=cond, control_image=torch.rand(1, 64, 64, 3), control_type="canny",
                          strength=1.0, **S)


def test_the_wrong_kind_of_condition_names_the_model(ctx):
    t2i, c2i = loader(ctx, TINY_T2I), loader(ctx, TINY_C2I)
    with pytest.raises(InvalidInputError, match="'tiny-c2i' is a class-conditional model.*ARClassCondition"):
        ARTextCondition.execute(ctx, model=c2i, prompt="a cat", cfg=4.0)
    with pytest.raises(InvalidInputError, match="'tiny-t2i' is a text-to-image model.*ARTextCondition"):
        ARClassCondition.execute(ctx, model=t2i, classes="cat face", cfg=4.0, cfg_schedule="linear")
    (text,) = ARTextCondition.execute(ctx, model=t2i, prompt="w1", cfg=4.0)
    (classes,) = ARClassCondition.execute(ctx, model=c2i, classes="cat face", cfg=4.0, cfg_schedule="linear")
    with pytest.raises(InvalidInputError, match="'tiny-c2i' is class-conditional"):
        ARGenerate.execute(ctx, model=c2i, cond=text, batch_size=1, more_smooth=False, **S)
    with pytest.raises(InvalidInputError, match="'tiny-t2i' is a text-to-image model"):
        ARVariation.execute(ctx, model=t2i, cond=classes, image=torch.rand(1, 64, 64, 3), strength=0.5, **S)
    with pytest.raises(InvalidInputError, match="input 'prompt' is empty"):
        ARTextCondition.execute(ctx, model=t2i, prompt="   ", cfg=4.0)
    with pytest.raises(ArnodesError, match="at most 4,000"):
        ARTextCondition.execute(ctx, model=t2i, prompt="w1 " * 2000, cfg=4.0)


# ---- the command line ------------------------------------------------------------------------------------
def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_generate_with_a_prompt_writes_a_png_that_replays(capsys, models_dir, tmp_path):
    out = tmp_path / "fox.png"
    code, stdout, err = run_cli(capsys, "generate", "--model", TINY_T2I, "--prompt", "w1 w2 w3", "--negative", "w9",
                                "--seed", "3", "--out", str(out), "--quiet")
    assert code == 0, err
    workflow = json.loads(Image.open(out).text["prompt"])
    text = next(n for n in workflow.values() if n["class_type"] == "ARTextCondition")
    assert text["inputs"]["prompt"] == "w1 w2 w3" and text["inputs"]["negative"] == "w9"
    assert not any(n["class_type"] == "ARClassCondition" for n in workflow.values())
    code, stdout, err = run_cli(capsys, "run", str(out), "--output-dir", str(tmp_path / "replay"), "--quiet")
    assert code == 0, err
    replayed = np.asarray(Image.open(stdout.strip().splitlines()[0]))
    assert np.array_equal(replayed, np.asarray(Image.open(out)))
    other = tmp_path / "other.png"
    assert run_cli(capsys, "generate", "--model", TINY_T2I, "--prompt", "w40 w41 w42 w43", "--negative", "w9",
                   "--seed", "3", "--out", str(other), "--quiet")[0] == 0
    assert not np.array_equal(np.asarray(Image.open(other)), np.asarray(Image.open(out)))


def test_cli_image_tasks_take_a_prompt(capsys, models_dir, tmp_path):
    src = tmp_path / "src.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(src)
    Image.fromarray(np.pad(np.full((32, 32), 255, np.uint8), 16)).save(tmp_path / "mask.png")
    for argv in (("inpaint", "--mask", str(tmp_path / "mask.png")), ("outpaint", "--right", "16"),
                 ("upscale",)):
        out = tmp_path / f"{argv[0]}.png"
        code, _, err = run_cli(capsys, *argv, "--model", TINY_T2I, "--prompt", "w5 w6", "--image", str(src),
                               "--out", str(out), "--quiet")
        assert code == 0, (argv, err)
        assert any(n["class_type"] == "ARTextCondition" for n in json.loads(Image.open(out).text["prompt"]).values())


@pytest.mark.parametrize("argv, needle", [
    (("--model", TINY_C2I, "--prompt", "a cat"), "'tiny-c2i' is a class-conditional model"),
    (("--model", TINY_T2I, "--class", "cat face"), "'tiny-t2i' is a text-to-image model"),
    (("--model", TINY_T2I, "--prompt", "w1", "--style", "noto"), "--style is for class-conditional models"),
])
def test_cli_wrong_condition_is_one_error_line(capsys, models_dir, tmp_path, argv, needle):
    code, _, err = run_cli(capsys, "generate", *argv, "--out", str(tmp_path / "x.png"), "--quiet")
    assert code == 2 and err.startswith("error:") and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("argv", [(), ("--class", "1", "--prompt", "w1")])
def test_cli_takes_exactly_one_of_class_and_prompt(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(["generate", *argv])
    assert e.value.code == 2 and "--class" in capsys.readouterr().err


def test_nodes_json_and_the_comfyui_pack_list_the_text_node(capsys):
    code, out, _ = run_cli(capsys, "nodes", "--json")
    spec = next(n for n in json.loads(out) if n["class_type"] == "ARTextCondition")
    assert code == 0 and [o["type"] for o in spec["outputs"]] == ["AR_COND"]
    assert {i["name"] for i in spec["inputs"]} >= {"model", "prompt", "cfg", "negative"}
    from arnodes.nodes.comfy_pack import build_mappings
    classes, names = build_mappings()
    types = classes["ARTextCondition"].INPUT_TYPES()
    assert names["ARTextCondition"] == "AR Text Condition" and classes["ARTextCondition"].RETURN_TYPES == ("AR_COND",)
    assert types["required"]["prompt"][0] == "STRING" and types["required"]["prompt"][1]["multiline"]
    assert types["required"]["model"][0] == "AR_MODEL" and "negative" in types["optional"]


# ---- the released text-to-image checkpoints --------------------------------------------------------------
T2I_NAMES = ("llamagen-t2i-xl-256", "llamagen-t2i-xl-512")


def test_released_t2i_checkpoints_are_listed_only_when_on_disk(tmp_path, monkeypatch):
    from arnodes.engine.registry import REGISTRY, checkpoint_present, model_defaults, takes_text
    from arnodes.nodes.types import model_choices, model_not_listed

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache; nothing is downloaded
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("ARNODES_MODELS_DIR", str(tmp_path / "models"))
    entry = REGISTRY["llamagen-t2i-xl-256"]
    assert entry.hf_repo == "peizesun/llamagen_t2i" and entry.generator_file == "t2i_XL_stage1_256.pt"
    assert REGISTRY["llamagen-t2i-xl-512"].generator_file == "t2i_XL_stage2_512.pt"
    assert all(takes_text(n) for n in T2I_NAMES) and not takes_text("llamagen-c2i-b-256")
    assert model_defaults("llamagen-t2i-xl-256")["cfg"] == 7.5
    assert not set(T2I_NAMES) & set(model_choices())
    hint = model_not_listed("llamagen-t2i-xl-256")
    assert "vq_ds16_t2i.pt" in hint and "peizesun/llamagen_t2i" in hint and "google/flan-t5-xl" in hint
    assert str(tmp_path / "models" / "flan-t5-xl") in hint
    models = tmp_path / "models"
    models.mkdir()
    for name in ("vq_ds16_t2i.pt", "t2i_XL_stage1_256.pt"):
        (models / name).write_bytes(b"")
    assert not checkpoint_present(entry)  # the checkpoint without its text encoder is not usable
    with pytest.raises(MissingFileError, match="text encoder file 'config.json'.*flan-t5-xl"):
        load_bundle("llamagen-t2i-xl-256", offline=True)  # the encoder is looked for first, offline
    encoder = models / "flan-t5-xl"
    encoder.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (encoder / name).write_bytes(b"")
    assert checkpoint_present(entry) and "llamagen-t2i-xl-256" in model_choices()
    assert "llamagen-t2i-xl-512" not in model_choices()
