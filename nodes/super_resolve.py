"""ARSuperResolve: training-free upscaling by next-scale (or tile-wise raster) continuation."""
from __future__ import annotations

from typing import Any

import torch

from ..engine import tasks
from ..engine.image import check_graph_image, engine_to_graph, graph_to_engine
from ..engine.limits import check_image_size
from .base import AR_COND, AR_MODEL, IMAGE, INT, ExecutionContext, InputSpec, Node, NodeSpec, OutputSpec
from .types import check_model, check_range, match_batch, run_settings, sampler_inputs


class ARSuperResolve(Node):
    """Upsample, keep what the low-res input determines (coarse scales, or most raster tokens)
    and generate the detail. Output = input size x `scale`; it must be a multiple of the model's
    resolution (larger outputs are processed tile by tile), e.g. a 32px input at x2 for a 64px model."""

    SPEC = NodeSpec(
        class_type="ARSuperResolve", display_name="AR Super-Resolve", category="tasks",
        inputs=(
            InputSpec("model", AR_MODEL),
            InputSpec("cond", AR_COND),
            InputSpec("image", IMAGE, tooltip="Low-resolution input; its size x scale must be a multiple of "
                                              "the model's resolution."),
            InputSpec("scale", INT, default=2, min=2, max=8, step=1, tooltip="Upscaling factor."),
            *sampler_inputs(),
        ),
        outputs=(OutputSpec("image", IMAGE, "The input size multiplied by scale."),),
        description="Upscale an image by generating the fine detail the model would add.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: Any, cond: Any, image: torch.Tensor, scale: int, seed: int,
                top_k: int, top_p: float, temperature: float) -> tuple[torch.Tensor]:
        handle = check_model(model)
        check_graph_image(image, "input 'image'")
        check_range("scale", scale, 2, 8)
        cond = match_batch(cond, image.shape[0])
        check_image_size(cond.batch, image.shape[1] * int(scale), image.shape[2] * int(scale), "ARSuperResolve output")
        if cond.batch != image.shape[0]:  # one image, several classes: one upscale per class
            image = image.expand(cond.batch, -1, -1, -1)
        with handle.use(cond.batch, "ARSuperResolve") as bundle:
            run = run_settings(ctx, bundle, seed, top_k, top_p, temperature)
            out = tasks.super_resolve(bundle, cond, graph_to_engine(image).to(bundle.device), int(scale), run)
        return (engine_to_graph(out).cpu(),)
