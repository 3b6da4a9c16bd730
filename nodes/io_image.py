"""ComfyUI core image nodes, under ComfyUI's names and input names, so one JSON runs in both.

LoadImage, LoadImageMask, SaveImage, PreviewImage and ImageScale behave as in
ComfyUI's nodes.py (checked against its source), with these deliberate differences:
file access is sandboxed to the input / output directories (absolute paths, '..'
and symlinks leaving them are refused); LoadImage's mask for an image without
alpha has the image's size (ComfyUI returns 64x64 zeros) so it fits the AR mask
inputs; animations give their first frame only, 16-bit and float images keep their
real range, and sizes are checked before decoding (nodes/image_files.py).

SaveImage turns floats into bytes with ComfyUI's rule, `uint8(clip(255 * x, 0, 255))`
(truncation, computed in float32), so the same tensor gives the same PNG bytes in both.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..engine.errors import InvalidInputError, StorageError
from ..engine.image import check_graph_image
from ..engine.limits import check_image_size
from .base import COMBO, IMAGE, INT, MASK, STRING, ExecutionContext, InputSpec, Node, NodeResult, NodeSpec, OutputSpec
from .image_files import claim_and_write, frames, open_image, to_float_arrays

MAX_RESOLUTION = 16384  # ComfyUI's limit for width/height widgets
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")
CHANNELS = ("alpha", "red", "green", "blue")


def _file_fingerprint(ctx: ExecutionContext, image: str) -> str:
    """Size + mtime: a file replaced under the same name is re-read."""
    try:
        st = ctx.input_path(image).stat()
    except (OSError, InvalidInputError):
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


class LoadImage(Node):
    SPEC = NodeSpec(
        class_type="LoadImage", display_name="Load Image", category="image", comfy_core=True,
        inputs=(InputSpec("image", COMBO, tooltip="File name inside the input directory."),),
        outputs=(OutputSpec("IMAGE", IMAGE), OutputSpec("MASK", MASK, "1 - alpha; zeros without alpha.")),
        description="Load an image (the first frame of an animation) and its alpha as a mask.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        img = open_image(ctx, image)
        images, masks = [], []
        for frame in frames(img, image):
            rgb, alpha = to_float_arrays(frame)
            if images and rgb.shape != images[0].shape:
                continue  # later frames of another size are skipped, as in ComfyUI
            images.append(rgb)
            masks.append(1.0 - alpha if alpha is not None else np.zeros(rgb.shape[:2], dtype=np.float32))
        if not images:
            raise InvalidInputError(f"input 'image': {image!r} holds no picture")
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))

    @classmethod
    def fingerprint(cls, ctx: ExecutionContext, image: str = "", **_: Any) -> str:
        return _file_fingerprint(ctx, image)


class LoadImageMask(Node):
    SPEC = NodeSpec(
        class_type="LoadImageMask", display_name="Load Image (as Mask)", category="mask", comfy_core=True,
        inputs=(InputSpec("image", COMBO, tooltip="File name inside the input directory."),
                InputSpec("channel", COMBO, default="alpha", choices=CHANNELS)),
        outputs=(OutputSpec("MASK", MASK),),
        description="Load one channel of an image as a mask (alpha is inverted, as in ComfyUI).",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, image: str, channel: str) -> tuple[torch.Tensor]:
        if channel not in CHANNELS:
            raise InvalidInputError(f"input 'channel': {channel!r} is not one of {', '.join(CHANNELS)}")
        first = next(frames(open_image(ctx, image), image), None)
        if first is None:
            raise InvalidInputError(f"input 'image': {image!r} holds no picture")
        rgb, alpha = to_float_arrays(first)
        if channel == "alpha":
            mask = 1.0 - alpha if alpha is not None else np.zeros(rgb.shape[:2], dtype=np.float32)
        else:
            mask = rgb[..., CHANNELS.index(channel) - 1]
        return (torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).unsqueeze(0),)

    @classmethod
    def fingerprint(cls, ctx: ExecutionContext, image: str = "", **_: Any) -> str:
        return _file_fingerprint(ctx, image)


def _next_counter(folder: Path, base: str) -> int:
    pattern = re.compile(rf"^{re.escape(base)}_(\d+)_\.png$")
    found = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))] if folder.is_dir() else []
    return max(found, default=0) + 1


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """ComfyUI's SaveImage rule: `uint8(clip(255. * x, 0, 255))` in the tensor's float precision
    (float32 for our IMAGEs), truncating, not rounding: the same tensor, the same bytes."""
    x = images.detach().cpu()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return np.clip(255.0 * x.numpy(), 0, 255).astype(np.uint8)  # (B, H, W, 3)


def save_png_batch(ctx: ExecutionContext, images: torch.Tensor, prefix: str, subfolder: str = "",
                   compress_level: int = 4) -> list[str]:
    """Write each image as `{prefix}_{counter:05}_.png` (relative paths returned) with the workflow in
    the `prompt` and extra_pnginfo text chunks; names claimed atomically, never half-written or replaced."""
    check_graph_image(images, "input 'images'")
    if not isinstance(prefix, str) or not prefix.strip():
        raise InvalidInputError(f"input 'filename_prefix' must be a non-empty string, got {prefix!r}")
    rel_prefix = f"{subfolder}/{prefix}" if subfolder else prefix
    try:
        probe = ctx.output_path(f"{rel_prefix}_00000_.png")  # sandbox and name checks; creates the folder
    except InvalidInputError as e:
        raise InvalidInputError(f"input 'filename_prefix': {e}") from None
    except OSError as e:
        raise StorageError(f"cannot create the output folder for {rel_prefix!r}: {e.strerror or e}") from None
    folder, base = probe.parent, probe.name[: -len("_00000_.png")]
    meta = PngInfo()
    meta.add_text("prompt", json.dumps(ctx.prompt))
    for key, value in (ctx.extra_pnginfo or {}).items():
        meta.add_text(str(key), json.dumps(value))
    counter = _next_counter(folder, base)
    written = []
    for frame in to_uint8(images):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG", pnginfo=meta, compress_level=compress_level)
        try:
            final = claim_and_write(folder, base, counter, buf.getvalue())
        except OSError as e:
            raise StorageError(f"cannot write {base}_*.png in {folder}: {e.strerror or e}") from None
        written.append(final.relative_to(Path(ctx.output_dir).resolve()).as_posix())
        counter = int(final.name[len(base) + 1:-len("_.png")]) + 1
    return written


class SaveImage(Node):
    SPEC = NodeSpec(
        class_type="SaveImage", display_name="Save Image", category="image", comfy_core=True,
        inputs=(InputSpec("images", IMAGE, tooltip="The images to save."),
                InputSpec("filename_prefix", STRING, default="arnodes",
                          tooltip="File name prefix; may include a subfolder ('runs/cat')."),),
        description="Save images as PNG in the output directory, with the workflow embedded for replay.",
        output_node=True, pure=False,
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, images: torch.Tensor, filename_prefix: str = "arnodes") -> NodeResult:
        return NodeResult((), ui={"images": save_png_batch(ctx, images, filename_prefix)})


class PreviewImage(Node):
    SPEC = NodeSpec(
        class_type="PreviewImage", display_name="Preview Image", category="image", comfy_core=True,
        inputs=(InputSpec("images", IMAGE),),
        description="Write quick previews into the output directory's preview/ folder.",
        output_node=True, pure=False,
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, images: torch.Tensor) -> NodeResult:
        return NodeResult((), ui={"images": save_png_batch(ctx, images, "preview", "preview", compress_level=1)})


def _lanczos(img_BCHW: torch.Tensor, width: int, height: int) -> torch.Tensor:
    frames = (img_BCHW.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = [np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
           for f in frames]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(img_BCHW.device)


class ImageScale(Node):
    SPEC = NodeSpec(
        class_type="ImageScale", display_name="Upscale Image", category="image/upscaling", comfy_core=True,
        inputs=(
            InputSpec("image", IMAGE),
            InputSpec("upscale_method", COMBO, default="nearest-exact", choices=UPSCALE_METHODS),
            InputSpec("width", INT, default=512, min=0, max=MAX_RESOLUTION, step=1,
                      tooltip="0 = keep the aspect ratio from height."),
            InputSpec("height", INT, default=512, min=0, max=MAX_RESOLUTION, step=1,
                      tooltip="0 = keep the aspect ratio from width."),
            InputSpec("crop", COMBO, default="disabled", choices=CROP_METHODS,
                      tooltip="center: crop to the target aspect ratio before resizing."),
        ),
        outputs=(OutputSpec("IMAGE", IMAGE),),
        description="Resize an image (ComfyUI's ImageScale).",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, image: torch.Tensor, upscale_method: str, width: int, height: int,
                crop: str) -> tuple[torch.Tensor]:
        check_graph_image(image, "input 'image'")
        if upscale_method not in UPSCALE_METHODS:
            raise InvalidInputError(f"input 'upscale_method': {upscale_method!r} is not one of "
                                    f"{', '.join(UPSCALE_METHODS)}")
        if crop not in CROP_METHODS:
            raise InvalidInputError(f"input 'crop': {crop!r} is not one of {', '.join(CROP_METHODS)}")
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RESOLUTION:
                raise InvalidInputError(f"input {name!r}: {value!r} is out of range; allowed: 0..{MAX_RESOLUTION}")
        if width == 0 and height == 0:
            return (image,)
        x = image.float().permute(0, 3, 1, 2)  # (B, 3, H, W)
        H, W = x.shape[-2:]
        width = width or max(1, round(W * height / H))
        height = height or max(1, round(H * width / W))
        check_image_size(x.shape[0], height, width, "ImageScale output")
        if crop == "center":  # ComfyUI's centre crop, but never down to zero rows / columns (it crashes there)
            old_aspect, new_aspect = W / H, width / height
            dx = round((W - W * (new_aspect / old_aspect)) / 2) if old_aspect > new_aspect else 0
            dy = round((H - H * (old_aspect / new_aspect)) / 2) if old_aspect < new_aspect else 0
            dx, dy = min(dx, (W - 1) // 2), min(dy, (H - 1) // 2)
            x = x[:, :, dy:H - dy, dx:W - dx]
        if upscale_method == "lanczos":
            out = _lanczos(x, width, height)
        else:
            out = F.interpolate(x, size=(height, width), mode=upscale_method)
        return (out.clamp(0, 1).permute(0, 2, 3, 1).contiguous(),)
