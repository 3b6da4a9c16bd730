"""Control: a structure map (edges, ...) tells the model where things go; the class draws the content.

The map conditions the generator through the model's control adapter (ControlAR for raster
models, a CAR-style adapter for next-scale models; engine/control). ``ARControlApply`` adds it
to a condition, so every task node (generate, inpaint, outpaint, edit, ...) runs under it;
``ARControl`` is the one-node form that generates a new image.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..engine import tasks
from ..engine.control import ControlCondition
from ..engine.image import check_graph_image, engine_to_graph, graph_to_engine
from .base import AR_COND, AR_MODEL, COMBO, FLOAT, IMAGE, ExecutionContext, InputSpec, Node, NodeSpec, OutputSpec
from .types import check_model, check_range, control_choices, match_batch, run_settings, sampler_inputs

MAX_STRENGTH = 2.0


def control_inputs() -> tuple[InputSpec, ...]:
    return (
        InputSpec("control_image", IMAGE, tooltip="The control map, e.g. from the Canny node (white edges on "
                                                  "black); resized to the model's resolution."),
        InputSpec("control_type", COMBO, default="canny", choices=control_choices,
                  tooltip="Which of the model's control adapters reads the map (it must match the map's kind)."),
        InputSpec("strength", FLOAT, default=1.0, min=0.0, max=MAX_STRENGTH, step=0.05,
                  tooltip="Scale of the control condition: 0 = uncontrolled (plain generation), 1 = as trained."),
    )


def checked_cond(cond: Any, control_image: torch.Tensor, strength: float):
    """``cond`` matched to the maps' batch (one map for every image, or one per image)."""
    check_graph_image(control_image, "input 'control_image'")
    check_range("strength", strength, 0.0, MAX_STRENGTH)
    return match_batch(cond, control_image.shape[0], "control_image")


class ARControlApply(Node):
    """Attach a control map to a condition; whatever task uses the condition follows the map."""

    SPEC = NodeSpec(
        class_type="ARControlApply", display_name="AR Apply Control", category="conditioning",
        inputs=(InputSpec("cond", AR_COND), *control_inputs()),
        outputs=(OutputSpec("cond", AR_COND, "The condition, now with the control map."),),
        description="Add a control map (e.g. Canny edges) to a condition for any AR task node.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, cond: Any, control_image: torch.Tensor, control_type: str,
                strength: float) -> tuple[Any]:
        cond = checked_cond(cond, control_image, strength)
        control = ControlCondition(str(control_type), graph_to_engine(control_image), float(strength))
        return (dataclasses.replace(cond, control=control),)


class ARControl(Node):
    """A new image of the class whose structure follows the control map."""

    SPEC = NodeSpec(
        class_type="ARControl", display_name="AR Control", category="tasks",
        inputs=(InputSpec("model", AR_MODEL), InputSpec("cond", AR_COND), *control_inputs(), *sampler_inputs()),
        outputs=(OutputSpec("image", IMAGE, "At the model's resolution."),),
        description="Generate a class following a control map (edges from the Canny node, ...).",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: Any, cond: Any, control_image: torch.Tensor, control_type: str,
                strength: float, seed: int, top_k: int, top_p: float, temperature: float) -> tuple[torch.Tensor]:
        handle = check_model(model)
        cond = checked_cond(cond, control_image, strength)
        with handle.use(cond.batch, "ARControl") as bundle:
            run = run_settings(ctx, bundle, seed, top_k, top_p, temperature)
            out = tasks.control(bundle, cond, graph_to_engine(control_image).to(bundle.device), str(control_type),
                                float(strength), run)
        return (engine_to_graph(out).cpu(),)
