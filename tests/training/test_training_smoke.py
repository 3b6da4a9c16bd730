"""End to end: train.py runs one tiny step of each stage, exports a bundle the engine loads, resumes."""
from __future__ import annotations

import json

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
