"""ARInpaint / AROutpaint: regenerate a masked region, or extend the canvas outward.

Both return an image at the *input's* pixel size (outpaint: plus the padding),
not the model's: the recipe runs at the model resolution and its result is
resized back, then composited so that pixels outside the mask (and outside the
feather band) are exactly the input's.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..engine import tasks
from ..engine.errors import InvalidInputError
from ..engine.limits import check_image_size
from ..engine.image import check_graph_image, check_graph_mask, engine_to_graph, graph_to_engine, outpaint_mask, resize
from .base import AR_COND, AR_MODEL, BOOLEAN, IMAGE, INT, MASK, ExecutionContext, InputSpec, Node, NodeSpec, OutputSpec
from .types import GSD_GROUP_MASS, check_model, check_range, decode_inputs, match_batch, run_settings, sampler_inputs

MAX_PAD = 4096


def to_size(img_BHWC: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a graph IMAGE (bicubic, antialiased when shrinking), kept in [0, 1]."""
    if tuple(img_BHWC.shape[1:3]) == (height, width):
        return img_BHWC
    out = resize(img_BHWC.permute(0, 3, 1, 2), height, width)  # (B, 3, h, w)
    return out.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def keep_outside(original: torch.Tensor, generated: torch.Tensor, mask_BHW: torch.Tensor) -> torch.Tensor:
    """Graph-space composite: exactly `original` where mask == 0 (no [-1, 1] round trip)."""
    m = mask_BHW.unsqueeze(-1).to(generated.dtype)  # (B, H, W, 1)
    return torch.where(m == 0, original.to(generated.dtype), original * (1 - m) + generated * m)


def regenerate(ctx: ExecutionContext, model: Any, cond: Any, image: torch.Tensor, mask: torch.Tensor,
               keep_unmasked: bool, sampler: dict) -> torch.Tensor:
    """Inpaint `image` where `mask` is 1; the result has the image's size (shared by AREdit)."""
    handle = check_model(model)
    check_graph_image(image, "input 'image'")
    B, H, W, _ = image.shape
    mask = check_graph_mask(mask, H, W, "input 'mask'")
    if mask.shape[0] not in (1, B):
        raise InvalidInputError(f"input 'mask' has {mask.shape[0]} masks for {B} images; give one, or one per image")
    cond = match_batch(cond, B)
    with handle.use(cond.batch, ctx.class_type) as bundle:
        run = run_settings(ctx, bundle, **sampler)
        out = tasks.inpaint(bundle, cond, graph_to_engine(image).to(bundle.device), mask.to(bundle.device), run,
                            keep_unmasked=False)
    out = to_size(engine_to_graph(out).cpu(), H, W)
    return keep_outside(image.float(), out, mask) if keep_unmasked else out


class ARInpaint(Node):
    SPEC = NodeSpec(
        class_type="ARInpaint", display_name="AR Inpaint", category="tasks",
        inputs=(
            InputSpec("model", AR_MODEL),
            InputSpec("cond", AR_COND),
            InputSpec("image", IMAGE),
            InputSpec("mask", MASK, tooltip="1 = regenerate, 0 = keep; a mask of another size is resized to the "
                                            "image (bilinear, as ComfyUI does)."),
            *sampler_inputs(),
            InputSpec("keep_unmasked", BOOLEAN, default=True,
                      tooltip="Paste the input back outside the mask, so those pixels are exactly unchanged."),
            *decode_inputs(),
        ),
        outputs=(OutputSpec("image", IMAGE, "Same size as the input image."),),
        description="Regenerate the masked region of an image; the unmasked tokens are kept.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: Any, cond: Any, image: torch.Tensor, mask: torch.Tensor,
                seed: int, top_k: int, top_p: float, temperature: float, keep_unmasked: bool,
                decode: str = "plain", draft_window: int = 0, draft_init: str = "auto",
                group_mass: float = GSD_GROUP_MASS) -> tuple[torch.Tensor]:
        sampler = dict(seed=seed, top_k=top_k, top_p=top_p, temperature=temperature, decode=decode,
                       draft_window=draft_window, draft_init=draft_init, group_mass=group_mass)
        return (regenerate(ctx, model, cond, image, mask, bool(keep_unmasked), sampler),)


def _pad_input(name: str, default: int) -> InputSpec:
    return InputSpec(name, INT, default=default, min=0, max=MAX_PAD, step=1, tooltip=f"Pixels added on the {name}.")


class AROutpaint(Node):
    SPEC = NodeSpec(
        class_type="AROutpaint", display_name="AR Outpaint", category="tasks",
        inputs=(
            InputSpec("model", AR_MODEL),
            InputSpec("cond", AR_COND),
            InputSpec("image", IMAGE),
            _pad_input("left", 16), _pad_input("top", 0), _pad_input("right", 16), _pad_input("bottom", 0),
            InputSpec("feathering", INT, default=8, min=0, max=MAX_PAD, step=1,
                      tooltip="Width of the band inside the original that is regenerated and blended."),
            *sampler_inputs(),
            *decode_inputs(),
        ),
        outputs=(OutputSpec("image", IMAGE, "Input size plus the padding; the original is kept outside the band."),),
        description="Extend an image beyond its borders (the new area is generated to match).",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: Any, cond: Any, image: torch.Tensor, left: int, top: int,
                right: int, bottom: int, feathering: int, seed: int, top_k: int, top_p: float,
                temperature: float, decode: str = "plain", draft_window: int = 0, draft_init: str = "auto",
                group_mass: float = GSD_GROUP_MASS) -> tuple[torch.Tensor]:
        handle = check_model(model)
        check_graph_image(image, "input 'image'")
        for name, value in (("left", left), ("top", top), ("right", right), ("bottom", bottom),
                            ("feathering", feathering)):
            check_range(name, value, 0, MAX_PAD)
        if left + top + right + bottom == 0:
            raise InvalidInputError("inputs 'left', 'top', 'right', 'bottom' are all 0; outpainting needs padding "
                                    "on at least one side")
        B, H, W, _ = image.shape
        cond = match_batch(cond, B)
        check_image_size(B, H + top + bottom, W + left + right, "AROutpaint output")
        sampler = dict(seed=seed, top_k=top_k, top_p=top_p, temperature=temperature, decode=decode,
                       draft_window=draft_window, draft_init=draft_init, group_mass=group_mass)
        with handle.use(cond.batch, "AROutpaint") as bundle:
            run = run_settings(ctx, bundle, **sampler)
            out = tasks.outpaint(bundle, cond, graph_to_engine(image).to(bundle.device), left, top, right, bottom,
                                 feathering, run)
        Hp, Wp = H + top + bottom, W + left + right
        out = to_size(engine_to_graph(out).cpu(), Hp, Wp)
        padded = F.pad(image.float().permute(0, 3, 1, 2), (left, right, top, bottom), mode="replicate")
        mask = outpaint_mask(H, W, left, top, right, bottom, feathering, B)
        return (keep_outside(padded.permute(0, 2, 3, 1), out, mask),)
