"""End to end: train.py runs one tiny step of each stage, exports a bundle the engine loads, resumes."""
from __future__ import annotations

import json
import math

import pytest
import torch

from arnodes.training import data

pytestmark = pytest.mark.skipif(
    data.find_font() is None or data.find_emoji_test() is None,
    reason="needs the Noto Color Emoji font (apt-get install fonts-noto-color-emoji) and "
           "emoji-test.txt (apt-get install unicode-data)",
)

TINY = ["--data-classes", "6", "--tok-steps", "1", "--var-steps", "1", "--tok-batch", "2", "--var-batch", "2",
        "--tok-ch", "32", "--tok-ch-mult", "1,1,1,1", "--vocab", "32", "--cvae", "4", "--depth", "1",
        "--embed-dim", "32", "--heads", "1", "--no-amp", "--threads", "1", "--fixed-threads", "--seed", "3"]


def test_training_smoke_end_to_end(tmp_path, capsys) -> None:
    from arnodes.engine.loader import load_manifest
    from arnodes.training import train
    from arnodes.training.evaluate import generate

    out, export = tmp_path / "run", tmp_path / "weights"
    args = ["--out", str(out), "--export", str(export), "--data-cache", str(tmp_path / "data")] + TINY
    state = train.run(train.parse_args(args))
    assert state["tok_step"] == 1 and state["var_step"] == 1
    assert (out / "ckpt.pt").is_file()

    manifest = json.loads((export / "emoji.json").read_text())
    assert manifest["family"] == "var" and manifest["image_size"] == 64
    assert manifest["tokenizer"]["config"]["vocab_size"] == 32
    classes = json.loads((export / manifest["classes"]).read_text())
    assert len(classes) == 6 and set(classes[0]) == {"name", "emoji", "group", "keywords"}
    assert manifest["generator"]["config"]["num_classes"] == 6

    bundle = load_manifest(export / "emoji.json")
    imgs = generate(bundle, [0, 5], seed=0, cfg=1.0, top_k=0, top_p=0.0)
    assert imgs.shape == (2, 64, 64, 3)

    # re-running the same command resumes from the checkpoint and trains nothing more
    capsys.readouterr()
    state2 = train.run(train.parse_args(args))
    assert "resuming" in capsys.readouterr().err
    assert state2["tok_step"] == 1 and state2["var_step"] == 1
    assert torch.equal(state2["var"]["head.weight"], state["var"]["head.weight"])


def test_restyle_smoke_with_scale_balanced_loss(tmp_path) -> None:
    """restyle adds the style table to an exported bundle and fine-tunes it with the scale-balanced loss
    and the first-scales batch, keeping the bundle's control adapters."""
    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine.generate import generate
    from arnodes.engine.loader import load_manifest
    from arnodes.engine.control.var_cnn import VARControlAdapter, VARControlConfig
    from arnodes.training import restyle, scale_loss, train
    from arnodes.training.control_adapter import write_adapter

    export, cache = tmp_path / "weights", tmp_path / "data"
    train.run(train.parse_args(["--out", str(tmp_path / "run"), "--export", str(export),
                                "--data-cache", str(cache)] + TINY))
    before = load_manifest(export / "emoji.json").generator.head.weight.clone()
    cfg = load_manifest(export / "emoji.json").generator.cfg  # an (untrained) adapter the re-export must keep
    write_adapter(export, "canny", VARControlAdapter(VARControlConfig(cfg.embed_dim, cfg.depth, cfg.patch_nums, 64,
                                                                      channels=(8, 8, 8, 8))), {"steps": 0})
    controls = json.loads((export / "emoji.json").read_text())["controls"]
    restyle.main(["--weights", str(export), "--data-cache", str(cache), "--steps", "2", "--batch", "2",
                  "--scale-balance", "1", "--coarse-batch", "4", "--threads", "1"])
    manifest = json.loads((export / "emoji.json").read_text())
    run = manifest["training"]["restyle_runs"][-1]
    assert run["steps"] == 2 and run["scale_balance"] == 1.0 and run["coarse_batch"] == 4
    assert manifest["controls"] == controls
    bundle = load_manifest(export / "emoji.json")
    assert bundle.generator.cfg.num_styles == len(manifest["styles"]) >= 2 and bundle.control("canny") is not None
    assert not torch.equal(bundle.generator.head.weight, before)  # it trained
    cond = Conditioning(class_ids=(0, 1), style_ids=(0, 1), cfg=1.0)
    assert bundle.tokenizer.decode_grids(generate(bundle, cond, seed=0).grids).shape == (2, 3, 64, 64)

    # scale_loss measures the restyled bundle: per-scale loss under the three style inputs, and the data's floor
    scale_loss.main(["--weights", str(export), "--data-cache", str(cache), "--label", "tiny", "--json",
                     str(tmp_path / "loss.json"), "--images", "8"])
    entry = json.loads((tmp_path / "loss.json").read_text())["bundles"]["tiny"]
    assert set(entry["cross_entropy"]) == {"right", "any", "wrong"}
    assert list(entry["cross_entropy"]["right"]) == [f"{p}x{p}" for p in bundle.generator.cfg.patch_nums]
    for floor in entry["floor_first_scales"].values():  # knowing the style can only lower the entropy
        assert 0.0 <= floor["class_and_style"] <= floor["class"] + 1e-9


def test_conditional_entropy_counts() -> None:
    from arnodes.training.scale_loss import conditional_entropy

    rows = torch.tensor([[1], [2], [1], [1]])
    assert conditional_entropy(rows, ["a", "a", "b", "b"]) == pytest.approx(0.5 * math.log(2))  # a: two values
    assert conditional_entropy(rows, ["a", "b", "c", "d"]) == 0.0


def test_scale_balanced_weights() -> None:
    from arnodes.training.generator_stage import scale_balanced_weights, weighted_cross_entropy

    pns = (1, 2, 3)
    plain, balanced, half = (scale_balanced_weights(pns, b) for b in (0.0, 1.0, 0.5))
    assert torch.equal(plain, torch.ones(14))
    per_scale = [balanced[:1].sum(), balanced[1:5].sum(), balanced[5:].sum()]
    assert torch.allclose(torch.stack(per_scale), torch.full((3,), 14 / 3))  # each scale weighs the same
    assert torch.allclose(half, (plain + balanced) / 2) and abs(float(half.mean()) - 1) < 1e-6
    with pytest.raises(ValueError, match="scale balance"):
        scale_balanced_weights(pns, 1.5)
    logits, y = torch.randn(2, 14, 5), torch.randint(0, 5, (2, 14))
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), y.reshape(-1), reduction="none").view(2, 14)
    assert torch.allclose(weighted_cross_entropy(logits, y, None), ce.mean())
    assert torch.allclose(weighted_cross_entropy(logits, y, balanced), (ce * balanced).mean())


def test_training_raster_smoke_end_to_end(tmp_path) -> None:
    """raster.py: one step of each stage on top of a (tiny) exported emoji-var bundle; the exported
    emoji-raster model loads beside it and draws with plain and speculative decoding."""
    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine.generate import DecodeOptions, generate
    from arnodes.engine.loader import load_manifest
    from arnodes.training import raster, train

    export, cache = tmp_path / "weights", str(tmp_path / "data")
    train.run(train.parse_args(["--out", str(tmp_path / "run"), "--export", str(export), "--data-cache", cache] + TINY))
    state = raster.run(raster.parse_args([
        "--weights", str(export), "--out", str(tmp_path / "raster"), "--data-cache", cache, "--tok-steps", "1",
        "--tok-batch", "2", "--gpt-steps", "1", "--gpt-batch", "2", "--dim", "32", "--layers", "1", "--heads", "1",
        "--threads", "1", "--seed", "3"]))
    assert state["tok_step"] == 1 and state["gpt_step"] == 1
    m = json.loads((export / "emoji_raster.json").read_text())
    assert (m["name"], m["family"], m["generator"]["kind"]) == ("emoji-raster", "llamagen", "llamagen")
    assert m["tokenizer"]["config"]["patch_nums"] == [8] and m["generator"]["config"]["block_size"] == 64
    assert m["classes"] == "emoji_classes.json" and m["generator"]["config"]["num_classes"] == 6
    bundle = load_manifest(export / "emoji_raster.json")
    for strategy in ("plain", "sjd"):
        stats: dict = {}
        canvas = generate(bundle, Conditioning((0, 5), cfg=2.0), seed=0, decode=DecodeOptions(strategy), stats=stats)
        assert canvas.grids[0].shape == (2, 8, 8) and stats["forwards"] >= 1
        assert bundle.tokenizer.decode_grids(canvas.grids).shape == (2, 3, 64, 64)


def test_training_text_model_smoke_end_to_end(tmp_path, capsys) -> None:
    """text_model.py: one step on top of a (tiny) exported emoji-raster bundle; the exported emoji-text model
    loads (its encoder through the manifest) and draws a prompt; a second run continues from the first
    (--init) with the auxiliary loss; re-running resumes; a run starts from the exported bundle with the
    prefix batch."""
    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine.generate import generate
    from arnodes.engine.loader import load_manifest
    from arnodes.training import raster, text_model, train

    export, cache = tmp_path / "weights", str(tmp_path / "data")
    train.run(train.parse_args(["--out", str(tmp_path / "run"), "--export", str(export), "--data-cache", cache] + TINY))
    raster.run(raster.parse_args([
        "--weights", str(export), "--out", str(tmp_path / "raster"), "--data-cache", cache, "--tok-steps", "1",
        "--tok-batch", "2", "--gpt-steps", "1", "--gpt-batch", "2", "--dim", "32", "--layers", "1", "--heads", "1",
        "--threads", "1", "--seed", "3"]))
    tiny = ["--weights", str(export), "--data-cache", cache, "--steps", "1", "--batch", "2", "--text-dim", "16",
            "--text-layers", "1", "--text-heads", "2", "--caption-tokens", "8", "--threads", "1", "--seed", "3"]
    first = text_model.run(text_model.parse_args(["--out", str(tmp_path / "t1")] + tiny))
    second = text_model.run(text_model.parse_args(["--out", str(tmp_path / "t2"), "--init", str(tmp_path / "t1" / "ckpt.pt"),
                                                   "--aux-weight", "1"] + tiny))
    assert first["t2i_step"] == 1 and second["t2i_step"] == 1
    assert not torch.equal(first["model"]["gpt.output.weight"], second["model"]["gpt.output.weight"])
    m = json.loads((export / "emoji_text.json").read_text())
    assert m["generator"]["config"]["model_type"] == "t2i" and m["generator"]["config"]["cls_token_num"] == 8
    assert m["text_encoder"]["max_length"] == 8 and m["training"]["init_steps"] == 1
    from arnodes.training.styles import STYLES
    assert m["training"]["data_styles"] == list(STYLES)  # data v3: all seven sets
    bundle = load_manifest(export / "emoji_text.json")
    canvas = generate(bundle, Conditioning(text=bundle.text_encoder.encode(["red heart, twemoji style"]), cfg=1.5),
                      seed=0)
    assert bundle.tokenizer.decode_grids(canvas.grids).shape == (1, 3, 64, 64)
    capsys.readouterr()
    again = text_model.run(text_model.parse_args(["--out", str(tmp_path / "t1")] + tiny))
    assert "resuming" in capsys.readouterr().err and again["t2i_step"] == 1

    # a third run starts from the exported bundle (float16 GPT, encoder, null caption) with the prefix batch
    exported_gpt = bundle.generator.state_dict()["cls_embedding.uncond_embedding"].float()
    third = text_model.run(text_model.parse_args(["--out", str(tmp_path / "t3"), "--init", str(export / "emoji_text.json"),
                                                  "--prefix-batch", "3", "--prefix-tokens", "4", "--no-export"] + tiny))
    assert third["t2i_step"] == 1 and "weights from" in capsys.readouterr().err
    assert not torch.equal(third["model"]["null_caption"], exported_gpt[:8])  # loaded, then trained one step
    assert torch.allclose(third["model"]["null_caption"], exported_gpt[:8], atol=0.05)
    with pytest.raises(SystemExit, match="not weights of this model"):
        text_model.run(text_model.parse_args(["--out", str(tmp_path / "t4"), "--init", str(export / "emoji_raster.json")]
                                             + tiny))


def test_training_text_init_moves_each_words_embedding_with_the_word() -> None:
    """A bundle exported over an older word list (before a style's name was added) continues with every
    known word's row where the new list puts it; new words keep their fresh rows."""
    from arnodes.training.text_model import regrow_vocab

    old, new = ["<pad>", "cat", "noto"], ["<pad>", "cat", "emojione", "noto"]
    rows = torch.arange(3, dtype=torch.float32)[:, None].repeat(1, 2)
    fresh = {"shared.weight": torch.full((4, 2), -1.0), "encoder.embed_tokens.weight": torch.full((4, 2), -1.0)}
    sd = {"shared.weight": rows, "encoder.embed_tokens.weight": rows.clone(), "encoder.block.0.w": torch.ones(3, 3)}
    out = regrow_vocab(sd, old, new, fresh)
    for k in fresh:
        assert out[k][:, 0].tolist() == [0.0, 1.0, -1.0, 2.0]
    assert torch.equal(out["encoder.block.0.w"], torch.ones(3, 3))  # not a vocabulary table: untouched
    assert regrow_vocab(sd, old, old, fresh) is sd
