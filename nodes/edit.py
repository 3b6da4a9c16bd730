"""AREdit (class-conditional region edit) and ARVariation (img2img)."""
from __future__ import annotations

from typing import Any

import torch

from ..engine import tasks
from ..engine.image import check_graph_image, engine_to_graph, graph_to_engine
from .base import AR_COND, AR_MODEL, FLOAT, IMAGE, MASK, ExecutionContext, InputSpec, Node, NodeSpec, OutputSpec
from .inpaint import regenerate
from .types import check_model, check_range, match_batch, run_settings, sampler_inputs


class AREdit(Node):
    """The VAR paper's zero-shot class-conditional editing: the region is regenerated under
    another class while the tokens around it are teacher-forced, so it blends in.
    Same recipe as inpainting; the output keeps the image's size and its pixels outside the region."""

    SPEC = NodeSpec(
        class_type="AREdit", display_name="AR Edit (Region -> Class)", category="tasks",
        inputs=(
            InputSpec("model", AR_MODEL),
            InputSpec("image", IMAGE),
            InputSpec("mask", MASK, tooltip="The region to change (1 inside); a mask of another size is resized "
                                            "to the image (bilinear, as ComfyUI does)."),
            InputSpec("cond", AR_COND, tooltip="The class the region should become."),
            *sampler_inputs(),
        ),
        outputs=(OutputSpec("image", IMAGE, "Same size as the input image."),),
        description="Replace a region of an image with content of another class.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: Any, image: torch.Tensor, mask: torch.Tensor, cond: Any,
                seed: int, top_k: int, top_p: float, temperature: float) -> tuple[torch.Tensor]:
        sampler = dict(seed=seed, top_k=top_k, top_p=top_p, temperature=temperature)
        return (regenerate(ctx, model, cond, image, mask, True, sampler),)


class ARVariation(Node):
    """img2img: keep the coarse structure of the image (first scales / first rows) and resample
    the rest. strength 0 = the input re-encoded, 1 = a fresh sample. Output at the model's resolution."""

    SPEC = NodeSpec(
        class_type="ARVariation", display_name="AR Variation (img2img)", category="tasks",
        inputs=(
            InputSpec("model", AR_MODEL),
            InputSpec("cond", AR_COND),
            InputSpec("image", IMAGE),
            InputSpec("strength", FLOAT, default=0.5, min=0.0, max=1.0, step=0.05,
                      tooltip="How much is regenerated: 0 = keep everything, 1 = ignore the image."),
            *sampler_inputs(),
        ),
        outputs=(OutputSpec("image", IMAGE, "At the model's resolution."),),
        description="Make variations of an image that keep its overall structure.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: Any, cond: Any, image: torch.Tensor, strength: float,
                seed: int, top_k: int, top_p: float, temperature: float) -> tuple[torch.Tensor]:
        handle = check_model(model)
        check_graph_image(image, "input 'image'")
        check_range("strength", strength, 0.0, 1.0)
        cond = match_batch(cond, image.shape[0])
        with handle.use(cond.batch, "ARVariation") as bundle:
            run = run_settings(ctx, bundle, seed, top_k, top_p, temperature)
            out = tasks.variation(bundle, cond, graph_to_engine(image).to(bundle.device), float(strength), run)
        return (engine_to_graph(out).cpu(),)
