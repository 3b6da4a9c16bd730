"""Same tensor, same PNG bytes as ComfyUI's SaveImage, so PNGs replay byte-identically across the two.

How this was checked against real ComfyUI: Comfy-Org/ComfyUI nodes.py (commit 02217e36a45b),
SaveImage.save_images converts each image with `255. * image.cpu().numpy()`, then
`np.clip(..., 0, 255).astype(np.uint8)` (float32 arithmetic, truncation, no rounding), writes the
`prompt` text chunk and then one chunk per extra_pnginfo key (JSON), with compress_level=4.
`comfy_save` below restates that rule from the description (not ComfyUI's code); the tests hold
our SaveImage to it, byte for byte.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from arnodes.cli import main
from arnodes.graph import Executor
from arnodes.graph.registry import default_registry
from arnodes.nodes.base import ExecutionContext
from arnodes.nodes.io_image import SaveImage, to_uint8

REPO = Path(__file__).resolve().parent.parent


def comfy_save(image_HWC: torch.Tensor, path: Path, prompt: dict, extra_pnginfo: dict | None) -> None:
    pixels = np.clip(255.0 * image_HWC.cpu().numpy(), 0, 255).astype(np.uint8)
    meta = PngInfo()
    meta.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        meta.add_text(key, json.dumps(value))
    Image.fromarray(pixels).save(path, pnginfo=meta, compress_level=4)


def test_float_to_byte_truncates_like_comfyui():
    x = torch.tensor([0.0, 0.5, 0.999, 1.0, 1.5, -0.25, 1 / 255, 2 / 255 - 1e-7, 254.9 / 255], dtype=torch.float32)
    got = to_uint8(x.view(1, 1, -1, 1).expand(1, 1, -1, 3))[0, 0, :, 0].tolist()
    assert got == [0, 127, 254, 255, 255, 0, 1, 1, 254]  # rounding would give 128, 255, ..., 2, 255


def test_save_image_bytes_equal_comfyui_save_image(tmp_path):
    images = torch.rand(3, 17, 23, 3, generator=torch.Generator().manual_seed(7))
    prompt = {"9": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}}}
    extra = {"workflow": {"nodes": [], "links": []}}
    ctx = ExecutionContext("9", "SaveImage", tmp_path, tmp_path / "ours", prompt=prompt, extra_pnginfo=extra)
    ours = SaveImage.execute(ctx, images=images, filename_prefix="x").ui["images"]
    for i, name in enumerate(ours):
        comfy_save(images[i], tmp_path / f"comfy{i}.png", prompt, extra)
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / f"comfy{i}.png").read_bytes(), name


@pytest.mark.skipif(not (REPO / "weights" / "emoji.json").is_file(), reason="bundled model missing")
@pytest.mark.parametrize("extra", [None, {"workflow": {"nodes": [], "links": [], "version": 0.4}}])
def test_a_png_saved_by_comfyui_replays_byte_identically(tmp_path, capsys, extra):
    registry = default_registry()
    workflow = json.loads((REPO / "workflows" / "generate.json").read_text())
    result = Executor(registry).run(workflow, input_dir=tmp_path, output_dir=tmp_path / "ours", extra_pnginfo=extra)
    decoded = result.outputs["4"][0]  # what ComfyUI's SaveImage would receive from our ARDecode
    comfy_png = tmp_path / "ComfyUI_00001_.png"
    comfy_save(decoded[0], comfy_png, workflow, extra)
    assert main(["run", str(comfy_png), "--output-dir", str(tmp_path / "replay"), "--quiet"]) == 0
    replayed = Path(capsys.readouterr().out.strip())
    assert replayed.read_bytes() == comfy_png.read_bytes(), "arnodes run of a ComfyUI PNG is not byte-identical"
    (ours,) = (tmp_path / "ours").glob("*.png")
    assert ours.read_bytes() == comfy_png.read_bytes(), "our SaveImage and ComfyUI's differ for the same tensor"
