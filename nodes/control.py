"""ARControl: structure guidance from a control image, training-free."""
from __future__ import annotations

from typing import Any

import torch

from ..engine import tasks
from ..engine.image import check_graph_image, engine_to_graph, graph_to_engine
from .base import AR_COND, AR_MODEL, FLOAT, IMAGE, ExecutionContext, InputSpec, Node, NodeSpec, OutputSpec
from .types import check_model, check_range, match_batch, run_settings, sampler_inputs


class ARControl(Node):
    """The control image's coarse structure is kept (its first scales for next-scale models, a
    lattice of its tokens for raster models) and the class decides the rest. strength = how much
    structure is fixed: 0 ignores the control image, 1 keeps it entirely. Output at the model's resolution."""

    SPEC = NodeSpec(
        class_type="ARControl", display_name="AR Control (Structure)", category="tasks",
        inputs=(
            InputSpec("model", AR_MODEL),
            InputSpec("cond", AR_COND),
            InputSpec("control_image", IMAGE, tooltip="Layout / structure to follow (resized to the model's size)."),
            InputSpec("strength", FLOAT, default=0.5, min=0.0, max=1.0, step=0.05,
                      tooltip="Fraction of the structure taken from the control image."),
            *sampler_inputs(),
        ),
        outputs=(OutputSpec("image", IMAGE, "At the model's resolution."),),
        description="Generate a class whose layout follows a control image.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: Any, cond: Any, control_image: torch.Tensor, strength: float,
                seed: int, top_k: int, top_p: float, temperature: float) -> tuple[torch.Tensor]:
        handle = check_model(model)
        check_graph_image(control_image, "input 'control_image'")
        check_range("strength", strength, 0.0, 1.0)
        cond = match_batch(cond, control_image.shape[0], "control_image")
        with handle.use() as bundle:
            run = run_settings(ctx, bundle, seed, top_k, top_p, temperature)
            out = tasks.control(bundle, cond, graph_to_engine(control_image).to(bundle.device), float(strength), run)
        return (engine_to_graph(out).cpu(),)
