"""ARRegionMask: a rectangular MASK from fractions, so workflows need no mask files."""
from __future__ import annotations

import torch

from ..engine.errors import InvalidInputError
from ..engine.image import check_graph_image
from .base import BOOLEAN, FLOAT, IMAGE, MASK, ExecutionContext, InputSpec, Node, NodeSpec, OutputSpec
from .types import check_range


def _frac(name: str, default: float) -> InputSpec:
    return InputSpec(name, FLOAT, default=default, min=0.0, max=1.0, step=0.01,
                     tooltip=f"{name} edge of the box as a fraction of the image's "
                             f"{'width' if name in ('left', 'right') else 'height'}.")


class ARRegionMask(Node):
    """Fractions (not pixels) so the same workflow works at any image size; edges round to the
    nearest pixel. 1 inside the box (regenerate), 0 outside; `invert` swaps them."""

    SPEC = NodeSpec(
        class_type="ARRegionMask", display_name="AR Region Mask", category="mask",
        inputs=(
            InputSpec("image", IMAGE, tooltip="Only its size (and batch) is used."),
            _frac("left", 0.25), _frac("top", 0.25), _frac("right", 0.75), _frac("bottom", 0.75),
            InputSpec("invert", BOOLEAN, default=False, tooltip="1 outside the box instead of inside."),
        ),
        outputs=(OutputSpec("mask", MASK, "Same size and batch as the image."),),
        description="A rectangular mask (1 = regenerate) sized to an image.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, image: torch.Tensor, left: float, top: float, right: float,
                bottom: float, invert: bool) -> tuple[torch.Tensor]:
        check_graph_image(image, "input 'image'")
        for name, value in (("left", left), ("top", top), ("right", right), ("bottom", bottom)):
            check_range(name, value, 0.0, 1.0)
        if right <= left or bottom <= top:
            raise InvalidInputError(f"inputs describe an empty box (left={left}, right={right}, top={top}, "
                                    f"bottom={bottom}); need left < right and top < bottom")
        B, H, W, _ = image.shape
        x0, x1 = round(left * W), round(right * W)
        y0, y1 = round(top * H), round(bottom * H)
        mask = torch.zeros(B, H, W, dtype=torch.float32)
        mask[:, y0:y1, x0:x1] = 1.0
        return (1.0 - mask if invert else mask,)

