"""The bundled emoji model is complete, small, loads through the engine and draws its classes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
pytestmark = pytest.mark.skipif(not (WEIGHTS / "emoji.json").is_file(), reason="no bundled weights/emoji.json")


def test_training_bundle_files_and_manifest() -> None:
    m = json.loads((WEIGHTS / "emoji.json").read_text())
    assert m["name"] == "emoji-var" and m["family"] == "var" and m["image_size"] == 64
    assert m["tokenizer"]["kind"] == "msvq" and m["generator"]["kind"] == "var"
    assert set(m["defaults"]) >= {"cfg", "top_k", "top_p"}
    classes = json.loads((WEIGHTS / m["classes"]).read_text(encoding="utf-8"))
    assert len(classes) == m["generator"]["config"]["num_classes"] >= 300
    assert len({c["group"] for c in classes}) >= 6
    total = sum(p.stat().st_size for p in WEIGHTS.iterdir() if p.is_file())
    assert total <= 40 * 2**20  # every bundled model together (bundled-models-v2 budget)
    assert m["styles"] == ["noto", "twemoji", "fluent-flat", "fluent-color"]
    assert m["generator"]["config"]["num_styles"] == len(m["styles"])


def test_training_bundle_generates_requested_class() -> None:
    from arnodes.engine.loader import load_manifest
    from arnodes.training.evaluate import generate

    bundle = load_manifest(WEIGHTS / "emoji.json")
    classes = json.loads((WEIGHTS / "emoji_classes.json").read_text(encoding="utf-8"))
    ids = [i for i, c in enumerate(classes) if c["name"] in ("grinning face", "melting face")]
    d = bundle.defaults
    imgs = generate(bundle, ids, seed=0, cfg=float(d["cfg"]), top_k=int(d["top_k"]), top_p=float(d["top_p"]))
    assert imgs.shape == (len(ids), 64, 64, 3)
    # emoji on white: bright corners, a coloured (yellow-ish) face in the middle
    assert imgs[:, :4, :4].mean() > 200
    centre = imgs[:, 20:44, 20:44].astype(float).mean(axis=(1, 2))
    assert (centre[:, 0] > centre[:, 2] + 40).all()


@pytest.mark.parametrize("low", [16, 32])
def test_training_bundle_super_resolve_beats_bicubic(low: int) -> None:
    """From a 16 or 32 px emoji, super-resolution is closer to the 64 px truth (PSNR) than bicubic."""
    import torch

    from arnodes.engine import tasks
    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine.image import resize
    from arnodes.engine.loader import load_manifest
    from arnodes.engine.sampling import SamplingParams
    from arnodes.training import data

    if data.find_font() is None:
        pytest.skip("NotoColorEmoji.ttf not installed (apt-get install fonts-noto-color-emoji)")
    bundle = load_manifest(WEIGHTS / "emoji.json")
    classes = json.loads((WEIGHTS / "emoji_classes.json").read_text(encoding="utf-8"))
    renderer = data.GlyphRenderer()
    ids = list(range(0, len(classes), len(classes) // 12))[:12]
    truth = np.stack([renderer.place(renderer.glyph(classes[i]["emoji"]))[0] for i in ids])
    gt = torch.from_numpy(truth).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    small = resize(gt, low, low)

    def psnr(x: torch.Tensor) -> float:
        mse = (x.clamp(-1, 1) - gt).pow(2).flatten(1).mean(1)
        return float((10 * torch.log10(4.0 / mse)).mean())

    out = tasks.super_resolve(bundle, Conditioning(tuple(ids), cfg=1.0), small, 64 // low,
                              tasks.RunSettings(params=SamplingParams(top_k=50, top_p=0.9), seed=0))
    assert out.shape == gt.shape
    assert psnr(out) > psnr(resize(small, 64, 64)) + 1.0


def _samples(names: list[str], seed: int, style: str = "any") -> np.ndarray:
    from arnodes.engine.loader import load_manifest
    from arnodes.training.evaluate import generate

    bundle = load_manifest(WEIGHTS / "emoji.json")
    ids = [bundle.classes.resolve(n) for n in names]
    d = bundle.defaults
    return generate(bundle, ids, seed=seed, cfg=float(d["cfg"]), top_k=int(d["top_k"]), top_p=float(d["top_p"]),
                    style=bundle.style_id(style))


SEED_CLASSES = ["red heart", "grinning face", "cat face", "red apple", "pizza", "fire", "rocket", "dog face"]


def test_training_bundle_seeds_give_different_drawings() -> None:
    """The v1 model drew one picture per class whatever the seed; v2 learned several styles per class."""
    from arnodes.training.evaluate import distinct_drawings

    runs = np.stack([_samples(SEED_CLASSES, seed) for seed in range(4)], axis=1)  # [classes, seeds, H, W, 3]
    counts = [distinct_drawings(r) for r in runs]
    assert np.mean(counts) >= 2.5, counts
    assert np.array_equal(runs[:, 0], _samples(SEED_CLASSES, 0))  # the same seed twice: identical


def test_training_bundle_style_input_changes_the_drawing() -> None:
    """Same classes, same seed, another style: another drawing. (How often the drawing is *in* the asked
    style is measured by training/evaluate.py and reported in the model card; it is still low.)"""
    names = ["red heart", "cat face", "pizza", "fire", "rocket", "grinning face"]
    got = {s: _samples(names, 0, s).astype(np.float32) for s in ("twemoji", "fluent-flat")}
    assert np.abs(got["twemoji"] - got["fluent-flat"]).mean() > 10
    assert np.array_equal(_samples(names, 0, "twemoji"), got["twemoji"].astype(np.uint8))
