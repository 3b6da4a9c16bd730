"""Preprocessors that turn a picture into a control map, under ComfyUI's core names and inputs,
so a workflow runs the same here and in ComfyUI (where the core node of that name is used)."""
from __future__ import annotations

import torch

from ..engine.canny import canny
from ..engine.image import check_graph_image
from .base import FLOAT, IMAGE, ExecutionContext, InputSpec, Node, NodeSpec, OutputSpec


class Canny(Node):
    """Thin one-pixel edges, white on black. The thresholds apply to the gradient strength of the
    blurred grey image, as in ComfyUI's core node: lower values keep fainter edges."""

    SPEC = NodeSpec(
        class_type="Canny", display_name="Canny", category="image/preprocessors", comfy_core=True,
        inputs=(
            InputSpec("image", IMAGE),
            InputSpec("low_threshold", FLOAT, default=0.4, min=0.01, max=0.99, step=0.01,
                      tooltip="Weak edges above this are kept where they touch a strong edge."),
            InputSpec("high_threshold", FLOAT, default=0.8, min=0.01, max=0.99, step=0.01,
                      tooltip="Edges above this are always kept."),
        ),
        outputs=(OutputSpec("image", IMAGE, "Edge map (white edges on black), same size as the input."),),
        description="Canny edge detection: the control map for the canny control adapters.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, image: torch.Tensor, low_threshold: float,
                high_threshold: float) -> tuple[torch.Tensor]:
        check_graph_image(image, "input 'image'")
        edges = canny(image.permute(0, 3, 1, 2).float(), float(low_threshold), float(high_threshold))  # (B, 1, H, W)
        return (edges.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous(),)
