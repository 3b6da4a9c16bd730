"""LoadImage / LoadImageMask on awkward and hostile files: real value ranges, first frame only,
sizes refused before decoding, corrupt files and non-files refused clearly."""
from __future__ import annotations

import os
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from arnodes.engine.errors import InvalidInputError, LimitError
from arnodes.nodes.base import ExecutionContext
from arnodes.nodes.io_image import LoadImage, LoadImageMask


@pytest.fixture
def ctx(tmp_path):
    (tmp_path / "in").mkdir()
    return ExecutionContext("1", "LoadImage", tmp_path / "in", tmp_path / "out")


def test_sixteen_bit_greyscale_keeps_its_range(ctx):
    values = np.linspace(0, 65535, 32 * 48).reshape(32, 48).astype(np.uint16)
    Image.fromarray(values).save(ctx.input_dir / "g16.png")
    assert Image.open(ctx.input_dir / "g16.png").mode.startswith("I")
    image, mask = LoadImage.execute(ctx, image="g16.png")
    assert image.shape == (1, 32, 48, 3) and mask.shape == (1, 32, 48)
    expected = torch.from_numpy(values.astype(np.float32) / 65535.0)
    assert torch.allclose(image[0, ..., 1], expected, atol=1e-6)
    assert 0.45 < image.mean() < 0.55, "a mid-grey gradient must not load as white"
    (red,) = LoadImageMask.execute(ctx, image="g16.png", channel="red")
    assert torch.allclose(red[0], expected, atol=1e-6)


def test_float_tiff_keeps_its_values(ctx):
    values = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(values, mode="F").save(ctx.input_dir / "f.tiff")
    image, _ = LoadImage.execute(ctx, image="f.tiff")
    assert torch.allclose(image[0, ..., 0], torch.from_numpy(values), atol=1e-7)
    assert image.mean() > 0.4, "a float image must not load as black"


def test_animation_gives_the_first_frame_unless_more_are_allowed(ctx, monkeypatch):
    frames = [Image.new("RGB", (8, 8), (i, 255 - i, 0)) for i in range(0, 300)]
    frames[0].save(ctx.input_dir / "anim.gif", save_all=True, append_images=frames[1:], duration=10)
    image, mask = LoadImage.execute(ctx, image="anim.gif")
    assert image.shape == (1, 8, 8, 3) and mask.shape == (1, 8, 8)
    assert abs(float(image[0, 0, 0, 1]) - 1.0) < 0.02  # the first frame: green
    monkeypatch.setenv("ARNODES_MAX_FRAMES", "3")
    image, _ = LoadImage.execute(ctx, image="anim.gif")
    assert image.shape == (3, 8, 8, 3)


def png_header_only(path, width: int, height: int) -> None:
    """A PNG that claims width x height in its header but carries almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [(12000, 12000), (20000, 20000), (100000, 8)])
def test_huge_images_are_refused_before_decoding(ctx, size):
    png_header_only(ctx.input_dir / "bomb.png", *size)
    started = time.perf_counter()
    with pytest.raises(LimitError, match="bomb.png"):
        LoadImage.execute(ctx, image="bomb.png")
    assert time.perf_counter() - started < 1.0, "the image was decoded before it was refused"


def test_pixel_limit_is_configurable(ctx, monkeypatch):
    Image.new("RGB", (64, 64)).save(ctx.input_dir / "small.png")
    monkeypatch.setenv("ARNODES_MAX_PIXELS", "1000")
    with pytest.raises(LimitError, match="ARNODES_MAX_PIXELS"):
        LoadImage.execute(ctx, image="small.png")


def test_truncated_and_fake_images_are_refused_clearly(ctx):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(ctx.input_dir / "a.png")
    data = (ctx.input_dir / "a.png").read_bytes()
    (ctx.input_dir / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match="cut.png.*truncated or corrupt"):
        LoadImage.execute(ctx, image="cut.png")
    Image.new("RGB", (32, 32), "red").save(ctx.input_dir / "b.jpg", quality=90)
    (ctx.input_dir / "cut.jpg").write_bytes((ctx.input_dir / "b.jpg").read_bytes()[:200])
    with pytest.raises(InvalidInputError, match="cut.jpg"):
        LoadImage.execute(ctx, image="cut.jpg")
    (ctx.input_dir / "text.png").write_text("just some text, not an image\n")
    with pytest.raises(InvalidInputError, match="cannot read 'text.png' as an image"):
        LoadImage.execute(ctx, image="text.png")


def test_folders_and_pipes_are_not_images(ctx):
    (ctx.input_dir / "dir.png").mkdir()
    with pytest.raises(InvalidInputError, match="not a regular file"):
        LoadImage.execute(ctx, image="dir.png")
    os.mkfifo(ctx.input_dir / "pipe.png")
    with pytest.raises(InvalidInputError, match="not a regular file"):
        LoadImage.execute(ctx, image="pipe.png")  # must not block on the pipe


@pytest.mark.parametrize("mode", ["CMYK", "LA", "P", "L", "1", "RGBA", "I;16"])
def test_other_modes_convert_to_rgb(ctx, mode):
    name = "m.tiff" if mode == "CMYK" else "m.png"
    Image.new("RGB", (10, 6), (200, 100, 50)).convert(mode).save(ctx.input_dir / name)
    image, mask = LoadImage.execute(ctx, image=name)
    assert image.shape == (1, 6, 10, 3) and mask.shape == (1, 6, 10)
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert torch.isfinite(image).all()
