"""ARGenerate: the constrained-generation primitive as a node (class- or text-conditioned sampling)."""
from __future__ import annotations

import time
from typing import Any

from ..engine import compute_thread
from ..engine.batching import default_batcher
from ..engine.conditioning import Conditioning
from ..engine.generate import DecodeOptions, generate
from ..engine.generate.canvas import TokenCanvas
from ..engine.limits import check_batch
from .base import (
    AR_COND, AR_MODEL, AR_TOKENS, BOOLEAN, INT, ExecutionContext, InputSpec, Node, NodeResult, NodeSpec, OutputSpec,
)
from .tokenize import check_tokens
from .types import (
    GSD_GROUP_MASS, ModelHandle, check_model, check_range, decode_inputs, decode_options, match_batch, sampler_inputs,
    sampling_params,
)

MAX_BATCH = 64


class ARGenerate(Node):
    """Fills the unknown tokens of a canvas (all of them without `tokens`) under the conditioning.

    With `tokens` linked, its known tokens are teacher-forced and only the rest is
    sampled: the primitive every task recipe uses, exposed for custom graphs.
    """

    SPEC = NodeSpec(
        class_type="ARGenerate", display_name="AR Generate", category="sampling", batchable=True,
        inputs=(
            InputSpec("model", AR_MODEL),
            InputSpec("cond", AR_COND),
            *sampler_inputs(),
            InputSpec("batch_size", INT, default=1, min=1, max=MAX_BATCH, tooltip="Images per class (or per prompt)."),
            InputSpec("more_smooth", BOOLEAN, default=False,
                      tooltip="VAR only: gumbel soft-embedding of the sampled tokens (smoother, less faithful)."),
            *decode_inputs(),
            InputSpec("tokens", AR_TOKENS, optional=True,
                      tooltip="Optional canvas whose known tokens are kept; the others are generated."),
        ),
        outputs=(OutputSpec("tokens", AR_TOKENS, "The completed canvas (every token known)."),),
        description="Sample image tokens for the given classes or prompt; decode them with ARDecode.",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: Any, cond: Any, seed: int, top_k: int, top_p: float,
                temperature: float, batch_size: int, more_smooth: bool, decode: str = "plain",
                tokens: TokenCanvas | None = None, draft_window: int = 0, draft_init: str = "auto",
                group_mass: float = GSD_GROUP_MASS) -> NodeResult:
        handle = check_model(model)
        options = decode_options(decode, draft_window, draft_init, group_mass)
        check_range("seed", seed, 0, 2 ** 63 - 1)
        check_range("batch_size", batch_size, 1, MAX_BATCH)
        cond = match_batch(cond, 1)
        check_batch(cond.batch * int(batch_size), "inputs 'cond' x 'batch_size'")
        if batch_size > 1:
            cond = cond.repeat(int(batch_size))
        canvas = None
        if tokens is not None:
            canvas = check_tokens(tokens)
            cond = match_batch(cond, canvas.batch, "tokens")
        stats: dict = {}
        # a fresh sample may share a batch with other requests for this model (the batcher takes the
        # model's lock); a canvas to complete runs alone under it. This node waits for company on its
        # own thread (SPEC.batchable), so its tensor work is handed to the compute thread here.
        started = time.perf_counter()
        if canvas is None:
            compute_thread.run(handle.load)  # a first load's tensor work, too
            with handle.pinned("ARGenerate") as (bundle, reserve):
                out = default_batcher().generate(bundle, bundle.generation_lock, cond,
                                                 sampling_params(bundle, top_k, top_p, temperature, more_smooth),
                                                 int(seed), progress=ctx.progress, decode=options, stats=stats,
                                                 reserve=reserve)
        else:
            out = compute_thread.run(_complete, handle, cond, canvas, seed, top_k, top_p, temperature, more_smooth,
                                     ctx, options, stats)
        stats["seconds"] = time.perf_counter() - started
        return NodeResult((out,), ui={"stats": [stats]})


def _complete(handle: ModelHandle, cond: Conditioning, canvas: TokenCanvas, seed: int, top_k: int, top_p: float,
              temperature: float, more_smooth: bool, ctx: ExecutionContext, options: DecodeOptions,
              stats: dict) -> TokenCanvas:
    """A canvas to complete runs alone under the model's lock."""
    with handle.use(cond.batch, "ARGenerate") as bundle:
        return generate(bundle, cond, canvas.to(bundle.device),
                        params=sampling_params(bundle, top_k, top_p, temperature, more_smooth),
                        seed=int(seed), progress=ctx.progress, decode=options, stats=stats)
