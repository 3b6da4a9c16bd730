"""Every example in workflows/ validates and runs end to end through the graph executor.

They run on the bundled model they name ("emoji-var", "emoji-raster" for the raster example,
"emoji-text" for the text-to-image one) when its manifest is in weights/, else on a tiny model of the same family built
from the parity fixtures (ARModelLoader's model overridden, class names equal to the emoji
names the workflows use). LlamaGen also runs the generate and chain examples on its tiny
fixture model, so both families go through the graph.

This module also holds `tiny_models_dir()`, which the node tests import.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
REFERENCE = REPO / "tests" / "fixtures" / "reference"
EMOJI_MANIFEST = REPO / "weights" / "emoji.json"
# Emoji classes the example workflows use, plus a few more: the tiny models have 10 classes.
TINY_CLASSES = ["red heart", "grinning face", "cat face", "red apple", "sun", "pizza", "dog face", "fire", "star",
                "rainbow"]
TINY_VAR, TINY_LLAMAGEN = "tiny-var.json", "tiny-llamagen.json"
TINY_CONTROLAR = "tiny-controlar.json"  # the ControlAR fixture's GPT + branch with the LlamaGen fixture's VQ


def _write(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


@lru_cache(maxsize=1)
def tiny_models_dir() -> Path:
    """A models directory with two tiny manifests (VAR and LlamaGen fixtures); shared by all test files,
    at a stable path so the process-wide model cache loads each model once."""
    import sys
    sys.path.insert(0, str(REPO / "tests"))
    from parity_var import msvq_config, var_config

    from arnodes.engine.models.llamagen import LlamaGenConfig
    from arnodes.engine.tokenizers.vq import VQConfig

    var_dir, lg_dir = REFERENCE / "var" / "tiny_a", REFERENCE / "llamagen" / "tiny_a"
    key = hashlib.sha256(f"{REPO}|{TINY_CLASSES}|v2".encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"arnodes-tiny-models-{key}"
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "classes.json", TINY_CLASSES)
    vcfg = json.loads((var_dir / "config.json").read_text())
    _write(out / TINY_VAR, {
        "name": "tiny-var", "family": "var", "image_size": vcfg["image_size"],
        "tokenizer": {"kind": "msvq", "file": str(var_dir / "vae.safetensors"),
                      "config": dataclasses.asdict(msvq_config(vcfg))},
        "generator": {"kind": "var", "file": str(var_dir / "var.safetensors"),
                      "config": dataclasses.asdict(var_config(vcfg))},
        "classes": "classes.json", "defaults": {}, "controls": {"canny": _tiny_var_control(out, var_config(vcfg))}})
    lcfg = json.loads((lg_dir / "config.json").read_text())
    vq = VQConfig.from_official(lcfg["vq_model_args"], lcfg.get("vq_encoder_decoder_kwargs"), lcfg["image_size"])
    _write(out / TINY_LLAMAGEN, {
        "name": "tiny-llamagen", "family": "llamagen", "image_size": lcfg["image_size"],
        "tokenizer": {"kind": "vq", "file": str(lg_dir / "vq.safetensors"), "config": dataclasses.asdict(vq)},
        "generator": {"kind": "llamagen", "file": str(lg_dir / "gpt.safetensors"),
                      "config": dataclasses.asdict(LlamaGenConfig.from_official(lcfg["gpt_model_args"]))},
        "classes": "classes.json", "defaults": {}})
    ccfg = json.loads((REFERENCE / "controlar" / "tiny_a" / "config.json").read_text())
    gpt_file = str(REFERENCE / "controlar" / "tiny_a" / "gpt.safetensors")  # GPT and branch in one file, as released
    _write(out / TINY_CONTROLAR, {
        "name": "tiny-controlar", "family": "llamagen", "image_size": lcfg["image_size"],
        "tokenizer": {"kind": "vq", "file": str(lg_dir / "vq.safetensors"), "config": dataclasses.asdict(vq)},
        "generator": {"kind": "llamagen", "file": gpt_file,
                      "config": dataclasses.asdict(LlamaGenConfig.from_official(ccfg["gpt_model_args"]))},
        "classes": "classes.json", "defaults": {},
        "controls": {"canny": {"kind": "controlar", "file": gpt_file,
                               "config": {"dim": 48, "n_layer": 6, "block_size": 16,
                                          "encoder_config": ccfg["adapter"]["vit_config"]},
                               "preprocessor": {"type": "canny"}}}})
    return out


def _tiny_var_control(out: Path, cfg) -> dict:
    """A seeded (untrained, non-zero) CAR-style adapter for the tiny VAR: enough to change what it draws."""
    from safetensors.torch import save_file

    from arnodes.engine.control.var_cnn import VARControlAdapter, VARControlConfig

    ccfg = VARControlConfig(embed_dim=cfg.embed_dim, depth=cfg.depth, patch_nums=tuple(cfg.patch_nums),
                            image_size=64, channels=(8,) + (16,) * ((64 // cfg.patch_nums[-1]).bit_length() - 1))
    adapter = VARControlAdapter(ccfg)
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=gen) * 0.5).contiguous() for k, v in adapter.state_dict().items()}
    save_file(state, str(out / "tiny_var_control.safetensors"))
    data = dataclasses.asdict(ccfg)
    return {"kind": "var-cnn", "file": "tiny_var_control.safetensors",
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()},
            "preprocessor": {"type": "canny", "low_threshold": 0.2, "high_threshold": 0.5}}


# --------------------------------------------------------------------------- running the examples

import numpy as np  # noqa: E402
import torch  # noqa: E402

from arnodes.graph import Executor, LRUCache, load_workflow, validate  # noqa: E402
from arnodes.graph.registry import default_registry  # noqa: E402

NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
MAIN_MODEL = "emoji-var" if EMOJI_MANIFEST.is_file() else TINY_VAR
BUNDLED_EXAMPLE_MODELS = {"emoji-var": (EMOJI_MANIFEST, TINY_VAR),
                          "emoji-raster": (REPO / "weights" / "emoji_raster.json", TINY_LLAMAGEN),
                          "emoji-text": (REPO / "weights" / "emoji_text.json", None)}  # no tiny text model here


def example_model(name: str) -> str:
    """The bundled model an example names, or the tiny model of its family when that one is absent."""
    manifest, tiny = BUNDLED_EXAMPLE_MODELS[read_example(name)["1"]["inputs"]["model"]]
    return read_example(name)["1"]["inputs"]["model"] if manifest.is_file() or tiny is None else tiny


@pytest.fixture(autouse=True)
def _models_dir(monkeypatch):
    monkeypatch.setenv("ARNODES_MODELS_DIR", str(tiny_models_dir()))


def with_model(workflow: dict, model: str) -> dict:
    wf = json.loads(json.dumps(workflow))
    for node in wf.values():
        if node["class_type"] == "ARModelLoader":
            node["inputs"]["model"] = model
            node["inputs"]["device"] = "cpu"
    return wf


def read_example(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


_RUNS: dict = {}


def run_example(name: str, model: str, tmp_root: Path):
    """Each (example, model) runs once per session, on its own Executor; tests share the result."""
    if (name, model) not in _RUNS:
        out = tmp_root / f"{name}-{model}"
        wf = with_model(read_example(name), model)
        executor = Executor(default_registry(), LRUCache(32))
        result = executor.run(wf, input_dir=out / "in", output_dir=out / "out")
        _RUNS[name, model] = (wf, result, out / "out", executor)
    return _RUNS[name, model][:3]


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("workflows")


def final_image(wf: dict, result) -> torch.Tensor:
    save_id = next(n for n, node in wf.items() if node["class_type"] == "SaveImage")
    src, idx = wf[save_id]["inputs"]["images"]
    return result.outputs[src][idx]


def source_image(wf: dict, result) -> torch.Tensor:
    dec = next(n for n, node in wf.items() if node["class_type"] == "ARDecode")
    return result.outputs[dec][0]


def test_examples_exist():
    expected = {"generate", "inpaint", "outpaint", "edit", "super_resolve", "control", "variation", "chain"}
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_example_validates_against_the_default_registry(name):
    assert validate(read_example(name), default_registry()) == []
    assert read_example(name)["1"]["inputs"]["model"] in BUNDLED_EXAMPLE_MODELS


@pytest.mark.parametrize("name", NAMES)
def test_example_runs_end_to_end(name, tmp_root):
    wf, result, out_dir = run_example(name, example_model(name), tmp_root)
    size = source_image(wf, result).shape[1]
    img = final_image(wf, result)
    expected = {"outpaint": (size, size + 32), "chain": (size, 2 * size)}.get(name, (size, size))
    assert tuple(img.shape) == (1, *expected, 3)
    assert img.min() >= 0 and img.max() <= 1 and img.std() > 0.02, "blank or constant output"
    pngs = [out_dir / p for ui in result.ui.values() for p in ui.get("images", [])]
    assert len(pngs) == 1 and pngs[0].is_file() and pngs[0].name.startswith(name)
    from PIL import Image
    assert Image.open(pngs[0]).size == (expected[1], expected[0])

    src = source_image(wf, result)
    if name in ("inpaint", "edit"):  # pixels outside the region are exactly the source's
        mask_id = next(n for n, node in wf.items() if node["class_type"] == "ARRegionMask")
        keep = result.outputs[mask_id][0][0] == 0
        assert torch.equal(img[0][keep], src[0][keep])
        assert not torch.equal(img[0][~keep], src[0][~keep])
    if name == "outpaint":
        from arnodes.engine.image import outpaint_mask
        p = wf["5"]["inputs"]
        keep = outpaint_mask(size, size, p["left"], p["top"], p["right"], p["bottom"], p["feathering"])[0] == 0
        padded = torch.nn.functional.pad(src.permute(0, 3, 1, 2), (p["left"], p["right"], 0, 0), mode="replicate")
        assert keep.sum() > 0 and torch.equal(img[0][keep], padded.permute(0, 2, 3, 1)[0][keep])


def test_example_runs_on_the_raster_family(tmp_root):
    wf, result, _ = run_example("generate", TINY_LLAMAGEN, tmp_root)
    img = final_image(wf, result)
    assert tuple(img.shape) == (1, 64, 64, 3) and img.std() > 0.02


def test_control_example_runs_on_a_controlar_model(tmp_root):
    wf, result, _ = run_example("control", TINY_CONTROLAR, tmp_root)
    img = final_image(wf, result)
    assert tuple(img.shape) == (1, 64, 64, 3) and img.std() > 0.02


@pytest.mark.parametrize("name", ["generate", "raster_sjd", "text_to_image"])
def test_saved_png_replays_bit_for_bit(tmp_root, tmp_path, name):
    wf, result, out_dir = run_example(name, example_model(name), tmp_root)
    png = out_dir / next(ui for ui in result.ui.values() if "images" in ui)["images"][0]
    loaded = load_workflow(png)
    assert loaded == wf
    again = Executor(default_registry(), LRUCache(8)).run(loaded, input_dir=tmp_path / "in",
                                                          output_dir=tmp_path / "out")
    assert torch.equal(final_image(wf, again), final_image(wf, result))
    png2 = tmp_path / "out" / next(ui for ui in again.ui.values() if "images" in ui)["images"][0]
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(png2)))


def test_changing_one_seed_reruns_only_downstream(tmp_root):
    wf, first, out_dir = run_example("generate", MAIN_MODEL, tmp_root)
    executor = _RUNS["generate", MAIN_MODEL][3]
    wf = json.loads(json.dumps(wf))
    differed = False
    for _ in range(8):  # a well-trained class can be near-deterministic: some seeds give the same tokens
        wf["3"]["inputs"]["seed"] += 1
        second = executor.run(wf, input_dir=out_dir.parent / "in", output_dir=out_dir)
        assert sorted(second.executed) == ["3", "4", "5"]
        assert sorted(second.cached) == ["1", "2"]
        if not torch.equal(second.outputs["4"][0], first.outputs["4"][0]):
            differed = True
            break
    assert differed, "eight other seeds all reproduced the first image: the seed does not reach the sampler"
    same = executor.run(wf, input_dir=out_dir.parent / "in", output_dir=out_dir)
    assert same.executed == ["5"]  # only SaveImage, which always writes
