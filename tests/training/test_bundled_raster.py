"""The bundled raster model emoji-raster: ships beside emoji-var, runs offline from every front end's
path (CLI here; graph, app and ComfyUI share the nodes), and its drafts are good enough that
speculative decoding saves forward passes on it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arnodes.cli import main

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
MANIFEST = WEIGHTS / "emoji_raster.json"
CLASSES = ["red heart", "grinning face", "cat face", "red apple", "pizza", "fire", "rocket", "dog face"]


def test_raster_manifest_shares_the_class_list_and_tokenizer_design() -> None:
    m = json.loads(MANIFEST.read_text())
    var = json.loads((WEIGHTS / "emoji.json").read_text())
    assert (m["name"], m["family"], m["generator"]["kind"]) == ("emoji-raster", "llamagen", "llamagen")
    assert m["classes"] == var["classes"]
    assert m["generator"]["config"]["num_classes"] == var["generator"]["config"]["num_classes"]
    tok, var_tok = m["tokenizer"]["config"], var["tokenizer"]["config"]
    assert m["tokenizer"]["kind"] == "msvq" and tok["patch_nums"] == var_tok["patch_nums"][-1:]
    assert {k: v for k, v in tok.items() if k != "patch_nums"} == {k: v for k, v in var_tok.items() if k != "patch_nums"}
    assert m["generator"]["config"]["block_size"] == tok["patch_nums"][0] ** 2


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("decode", ["plain", "sjd", "gsd"])
def test_raster_cli_draws_the_class_offline(capsys, tmp_path, monkeypatch, decode) -> None:
    """`arnodes generate --model emoji-raster --class "red heart"`: an emoji on white with a red middle, the
    forward count in --stats-json (speculative strategies need fewer), and the PNG replays to the same pixels."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, stats = tmp_path / "heart.png", tmp_path / "stats.json"
    code, err = _cli(capsys, "generate", "--model", "emoji-raster", "--class", "red heart", "--seed", "1",
                     "--decode", decode, "--stats-json", str(stats), "--out", str(out), "--quiet")
    assert code == 0, err
    img = np.asarray(Image.open(out).convert("RGB")).astype(float)
    assert img.shape == (64, 64, 3) and img[:4, :4].mean() > 200
    centre = img[16:48, 16:48].reshape(-1, 3).mean(0)
    assert centre[0] > centre[1] + 60 and centre[0] > centre[2] + 60, centre
    data = json.loads(stats.read_text())
    assert data["decode"] == decode and data["tokens"] == 64
    assert data["forwards"] == 64 if decode == "plain" else data["forwards"] < 48
    code, err = _cli(capsys, "run", str(out), "--output-dir", str(tmp_path / "replay"), "--quiet")
    assert code == 0, err
    again = next((tmp_path / "replay").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))


def test_raster_speculative_decoding_saves_forwards_on_the_trained_model() -> None:
    """Averaged over classes: SJD (exact) drafting from the model's draft store (its default here) at least
    4x fewer forwards than plain, and still 1.5x with Jacobi / row-above drafts alone; GSD no more than
    SJD (at the default top-k 50 / top-p 0.9 its groups add little here). bench/results/decode_strategies.json
    has the full figures."""
    import torch

    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine.generate import DecodeOptions, generate
    from arnodes.engine.loader import load_manifest
    from arnodes.engine.sampling import SamplingParams

    bundle = load_manifest(MANIFEST)
    assert bundle.draft_store is not None and bundle.draft_store.tokens.shape[1] == 64
    d = bundle.defaults
    params = SamplingParams(top_k=int(d["top_k"]), top_p=float(d["top_p"]), top_p_style="llamagen")
    forwards = {}
    for key, options in {"plain": DecodeOptions(), "sjd": DecodeOptions("sjd"), "gsd": DecodeOptions("gsd"),
                         "sjd above": DecodeOptions("sjd", init="above")}.items():
        total = 0
        for i, name in enumerate(CLASSES):
            stats: dict = {}
            generate(bundle, Conditioning((bundle.classes.resolve(name),), cfg=float(d["cfg"])), params=params,
                     generator=torch.Generator().manual_seed(i), decode=options, stats=stats)
            total += stats["forwards"]
        forwards[key] = total / len(CLASSES)
    assert forwards["plain"] == 64
    assert forwards["sjd"] <= 64 / 4 and forwards["gsd"] <= forwards["sjd"], forwards
    assert forwards["sjd above"] <= 64 / 1.5, forwards
