"""The one engine primitive: constrained generation on a TokenCanvas (DESIGN.md section 3).

``generate(bundle, cond, canvas)`` fills the canvas positions that are not known,
for either family; every task (generate, inpaint, outpaint, edit, super-resolve,
control, variation) is a recipe that prepares the canvas and its masks.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..conditioning import Conditioning
from ..errors import InvalidInputError
from ..sampling import Randomness, RequestGenerators, SamplingParams
from .canvas import TokenCanvas
from .decoders import DECODERS, DecodeOptions

__all__ = ["TokenCanvas", "generate", "empty_canvas", "make_generator", "DECODERS", "DecodeOptions"]


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A seeded generator on the model's device; the same seed reproduces an image on the same device."""
    if seed is None:
        return None
    if not isinstance(seed, int) or seed < 0 or seed >= 2 ** 63:
        raise InvalidInputError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def empty_canvas(bundle, batch: int) -> TokenCanvas:
    shapes = bundle.tokenizer.grid_shapes_for(bundle.image_size)
    return TokenCanvas.empty(bundle.family, bundle.tokenizer_id, shapes, batch, device=bundle.device)


def check_condition_kind(bundle, cond: Conditioning) -> None:
    """A prompt for a class-conditional model, or classes for a text-to-image one: refused, naming the model
    (the conditioning and the model come from different places in a graph)."""
    text_model = bool(getattr(bundle, "takes_text", False))
    if cond.text is not None and not text_model:
        raise InvalidInputError(f"model {bundle.name!r} is class-conditional: it takes class names or ids, not a "
                                f"text prompt")
    if cond.text is None and text_model:
        raise InvalidInputError(f"model {bundle.name!r} is a text-to-image model: it takes a text prompt, not "
                                f"class ids")


def generate(bundle, cond: Conditioning, canvas: TokenCanvas | None = None, params: SamplingParams | None = None,
             seed: int | None = None, generator: Randomness = None,
             progress: Callable[[int, int], None] | None = None, trace: dict | None = None,
             compile: str | None = None, decode: DecodeOptions | None = None,
             stats: dict | None = None) -> TokenCanvas:
    """Generate the unknown tokens of ``canvas`` (all of them when None) under ``cond``.
    ``compile``: "auto" | "on" | "off" for the decode step (None: the process default, generate/compiled.py);
    ``decode``: the strategy (generate/decoders.py, default plain); ``stats`` receives "forwards" (model
    forward passes) and the strategy's name. ``generator`` may be a ``RequestGenerators``: several
    requests batched, each row group drawing from its own request's generator (engine/batching.py)."""
    decode = decode or DecodeOptions()
    decode.check_family(bundle.family)
    check_condition_kind(bundle, cond)
    if isinstance(generator, RequestGenerators) and decode.strategy != "plain":
        raise InvalidInputError(f"{decode.strategy} decoding accepts a batch's tokens together; it cannot run "
                                f"several requests' seeds as one batch")
    if canvas is None:
        canvas = empty_canvas(bundle, cond.batch)
    else:
        canvas.check_compatible(bundle.family, bundle.tokenizer_id, bundle.tokenizer.grid_shapes_for(bundle.image_size))
        canvas = canvas.expand_batch(cond.batch)
    if canvas.batch != cond.batch:
        raise InvalidInputError(f"{canvas.batch} token canvases but {cond.batch} class labels; give one label per "
                                f"image or a single image")
    if generator is None:
        generator = make_generator(seed, bundle.device)
    if cond.control is not None:
        cond = dataclasses.replace(cond, control=cond.control.resolved(bundle))
    if bundle.family == "var":
        from .next_scale import generate_scales
        params = params or SamplingParams(top_k=bundle.defaults.get("top_k", 0), top_p=bundle.defaults.get("top_p", 1.0))
        out = generate_scales(bundle.generator, bundle.tokenizer, cond, canvas, params, generator, progress, trace,
                              compile=compile)
        if stats is not None:
            stats.update(forwards=len(out.grids), decode=decode.strategy, tokens=sum(g[0].numel() for g in out.grids))
        return out
    if bundle.family == "llamagen":
        from .next_token import generate_tokens
        params = params or SamplingParams(top_k=bundle.defaults.get("top_k", 0), top_p=bundle.defaults.get("top_p", 1.0),
                                          temperature=bundle.defaults.get("temperature", 1.0), top_p_style="llamagen")
        return generate_tokens(bundle.generator, cond, canvas, params, generator, progress, trace, compile=compile,
                               decode=decode, stats=stats, draft_store=getattr(bundle, "draft_store", None))
    raise InvalidInputError(f"unknown model family {bundle.family!r}")
