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
    assert total < 25 * 2**20


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
