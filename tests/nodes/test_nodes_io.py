"""ComfyUI core image nodes (LoadImage, LoadImageMask, SaveImage, PreviewImage, ImageScale) and ARRegionMask."""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from arnodes.engine.errors import InvalidInputError, MissingFileError, StorageError
from arnodes.graph import read_png_text
from arnodes.nodes import image_files
from arnodes.nodes.base import ExecutionContext
from arnodes.nodes.io_image import ImageScale, LoadImage, LoadImageMask, PreviewImage, SaveImage
from arnodes.nodes.masks import ARRegionMask


@pytest.fixture
def ctx(tmp_path):
    (tmp_path / "in").mkdir()
    return ExecutionContext("9", "X", tmp_path / "in", tmp_path / "out", prompt={"9": {"class_type": "SaveImage"}},
                            extra_pnginfo={"workflow": {"nodes": []}})


def _rgba(path, alpha=True):
    arr = np.zeros((6, 8, 4), dtype=np.uint8)
    arr[..., 0] = 200
    arr[..., 3] = 255
    arr[:3, :, 3] = 0  # top half transparent
    Image.fromarray(arr if alpha else arr[..., :3], "RGBA" if alpha else "RGB").save(path)


def test_load_image_rgb_and_mask_from_alpha(ctx):
    _rgba(ctx.input_dir / "a.png")
    img, mask = LoadImage.execute(ctx, image="a.png")
    assert img.shape == (1, 6, 8, 3) and img.dtype == torch.float32
    assert torch.allclose(img[0, 0, 0], torch.tensor([200 / 255, 0, 0]))
    assert mask.shape == (1, 6, 8) and mask[0, :3].eq(1).all() and mask[0, 3:].eq(0).all()  # 1 - alpha
    _rgba(ctx.input_dir / "b.png", alpha=False)
    _, mask = LoadImage.execute(ctx, image="b.png")
    assert mask.shape == (1, 6, 8) and mask.eq(0).all()


def test_load_image_fingerprint_follows_the_file(ctx):
    _rgba(ctx.input_dir / "a.png")
    before = LoadImage.fingerprint(ctx, image="a.png")
    _rgba(ctx.input_dir / "a.png", alpha=False)
    os.utime(ctx.input_dir / "a.png", ns=(1, 10 ** 18))
    assert LoadImage.fingerprint(ctx, image="a.png") != before


def test_load_image_sandbox(ctx, tmp_path):
    _rgba(tmp_path / "secret.png")
    for bad in ["../secret.png", str(tmp_path / "secret.png")]:
        with pytest.raises(InvalidInputError):
            LoadImage.execute(ctx, image=bad)
    (ctx.input_dir / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(InvalidInputError, match="outside the input directory"):
        LoadImage.execute(ctx, image="link.png")
    with pytest.raises(MissingFileError, match="nope.png"):
        LoadImage.execute(ctx, image="nope.png")
    (ctx.input_dir / "junk.png").write_bytes(b"not an image")
    with pytest.raises(InvalidInputError, match="cannot read"):
        LoadImage.execute(ctx, image="junk.png")


def test_load_image_mask_channels(ctx):
    _rgba(ctx.input_dir / "a.png")
    (alpha,) = LoadImageMask.execute(ctx, image="a.png", channel="alpha")
    (red,) = LoadImageMask.execute(ctx, image="a.png", channel="red")
    (green,) = LoadImageMask.execute(ctx, image="a.png", channel="green")
    assert alpha.shape == red.shape == (1, 6, 8)
    assert alpha[0, 0, 0] == 1 and alpha[0, 5, 0] == 0
    assert torch.allclose(red, torch.full_like(red, 200 / 255)) and green.eq(0).all()
    with pytest.raises(InvalidInputError, match="channel"):
        LoadImageMask.execute(ctx, image="a.png", channel="purple")


def test_save_image_png_with_workflow_chunks_and_counter(ctx):
    images = torch.rand(2, 5, 7, 3)
    res = SaveImage.execute(ctx, images=images, filename_prefix="run/cat")
    assert res.ui["images"] == ["run/cat_00001_.png", "run/cat_00002_.png"]
    first = ctx.output_dir / "run" / "cat_00001_.png"
    chunks = read_png_text(first.read_bytes())
    assert json.loads(chunks["prompt"]) == ctx.prompt and json.loads(chunks["workflow"]) == {"nodes": []}
    saved = np.asarray(Image.open(first))
    assert saved.shape == (5, 7, 3) and np.array_equal(saved, np.clip(255.0 * images[0].numpy(), 0, 255).astype(np.uint8))
    again = SaveImage.execute(ctx, images=images[:1], filename_prefix="run/cat")
    assert again.ui["images"] == ["run/cat_00003_.png"]
    assert sorted(p.name for p in (ctx.output_dir / "run").iterdir()) == [
        "cat_00001_.png", "cat_00002_.png", "cat_00003_.png"]


def test_save_image_refuses_escapes_and_leaves_nothing_half_written(ctx, monkeypatch):
    for bad in ["../x", "/tmp/x"]:
        with pytest.raises(InvalidInputError):
            SaveImage.execute(ctx, images=torch.rand(1, 4, 4, 3), filename_prefix=bad)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(image_files.os, "fsync", disk_full)
    with pytest.raises(StorageError, match="No space left on device"):
        SaveImage.execute(ctx, images=torch.rand(1, 4, 4, 3), filename_prefix="x")
    assert list(ctx.output_dir.iterdir()) == []  # no PNG, no temp file


def test_preview_image_goes_to_preview_folder(ctx):
    res = PreviewImage.execute(ctx, images=torch.rand(1, 4, 4, 3))
    assert res.ui["images"] == ["preview/preview_00001_.png"]
    assert (ctx.output_dir / "preview" / "preview_00001_.png").is_file()
    assert not SaveImage.SPEC.pure and SaveImage.SPEC.output_node and SaveImage.SPEC.comfy_core


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])
def test_image_scale_methods(ctx, method):
    img = torch.rand(2, 8, 12, 3)
    (out,) = ImageScale.execute(ctx, image=img, upscale_method=method, width=6, height=4, crop="disabled")
    assert out.shape == (2, 4, 6, 3) and 0 <= out.min() and out.max() <= 1


def test_image_scale_zero_keeps_aspect_and_center_crop(ctx):
    img = torch.rand(1, 8, 16, 3)
    assert ImageScale.execute(ctx, image=img, upscale_method="area", width=0, height=0, crop="disabled")[0] is img
    (out,) = ImageScale.execute(ctx, image=img, upscale_method="area", width=0, height=4, crop="disabled")
    assert out.shape == (1, 4, 8, 3)
    img = torch.zeros(1, 8, 16, 3)
    img[:, :, 4:12] = 1.0  # the centre square is white, the sides black
    (out,) = ImageScale.execute(ctx, image=img, upscale_method="nearest-exact", width=8, height=8, crop="center")
    assert out.shape == (1, 8, 8, 3) and out.eq(1).all()


def test_region_mask(ctx):
    img = torch.rand(2, 10, 20, 3)
    (mask,) = ARRegionMask.execute(ctx, image=img, left=0.5, top=0.0, right=1.0, bottom=0.5, invert=False)
    assert mask.shape == (2, 10, 20) and mask.sum() == 2 * 5 * 10 and mask[:, :5, 10:].eq(1).all()
    (inv,) = ARRegionMask.execute(ctx, image=img, left=0.5, top=0.0, right=1.0, bottom=0.5, invert=True)
    assert torch.equal(inv, 1 - mask)
    with pytest.raises(InvalidInputError, match="empty box"):
        ARRegionMask.execute(ctx, image=img, left=0.6, top=0.0, right=0.5, bottom=0.5, invert=False)
    with pytest.raises(InvalidInputError, match="'top'"):
        ARRegionMask.execute(ctx, image=img, left=0.0, top=-0.1, right=0.5, bottom=0.5, invert=False)
