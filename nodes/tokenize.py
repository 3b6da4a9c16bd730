"""ARTokenize / ARDecode: between pixels (IMAGE) and the token canvas (AR_TOKENS)."""
from __future__ import annotations

from typing import Any

import torch

from ..engine import tasks
from ..engine.errors import InvalidInputError
from ..engine.generate.canvas import TokenCanvas
from ..engine.image import check_graph_image, engine_to_graph, graph_to_engine
from .base import AR_MODEL, AR_TOKENS, IMAGE, INT, ExecutionContext, InputSpec, Node, NodeSpec, OutputSpec
from .types import check_model, check_range


def check_tokens(tokens: Any, name: str = "tokens") -> TokenCanvas:
    if not isinstance(tokens, TokenCanvas):
        raise InvalidInputError(f"input {name!r} must be AR_TOKENS (from ARTokenize or ARGenerate), "
                                f"got {type(tokens).__name__}")
    return tokens


class ARTokenize(Node):
    """Image -> fully known token canvas; the image is resized to the model's resolution first."""

    SPEC = NodeSpec(
        class_type="ARTokenize", display_name="AR Tokenize (Image -> Tokens)", category="tokens",
        inputs=(InputSpec("model", AR_MODEL), InputSpec("image", IMAGE)),
        outputs=(OutputSpec("tokens", AR_TOKENS, "Token grids of the image, all marked known."),),
        description="Encode an image into the model's discrete tokens (resized to the model resolution).",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: Any, image: torch.Tensor) -> tuple[TokenCanvas]:
        handle = check_model(model)
        check_graph_image(image, "input 'image'")
        with handle.use() as bundle:
            canvas = tasks.encode(bundle, graph_to_engine(image).to(bundle.device))
        return (canvas,)


class ARDecode(Node):
    """Tokens -> image at the model's resolution; `scales` > 0 decodes only the first k scales
    (next-scale models: a coarse preview; raster models have a single grid, so only 0 or 1)."""

    SPEC = NodeSpec(
        class_type="ARDecode", display_name="AR Decode (Tokens -> Image)", category="tokens",
        inputs=(
            InputSpec("model", AR_MODEL),
            InputSpec("tokens", AR_TOKENS),
            InputSpec("scales", INT, default=0, min=0, max=64,
                      tooltip="0 = all scales; k = decode from the first k scales only (coarse preview)."),
        ),
        outputs=(OutputSpec("image", IMAGE),),
        description="Decode a token canvas into an image at the model's resolution.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: Any, tokens: Any, scales: int = 0) -> tuple[torch.Tensor]:
        handle = check_model(model)
        canvas = check_tokens(tokens)
        check_range("scales", scales, 0, None)
        if scales > len(canvas.grids):
            raise InvalidInputError(f"input 'scales': {scales} is more than the {len(canvas.grids)} scale(s) of "
                                    f"these tokens; allowed: 0 (all) to {len(canvas.grids)}")
        with handle.use() as bundle:
            img = tasks.decode(bundle, canvas.to(bundle.device), int(scales) or None)
        return (engine_to_graph(img).cpu(),)
