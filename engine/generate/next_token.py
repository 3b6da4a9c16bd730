"""Raster next-token generation (LlamaGen) over a TokenCanvas, in gpt-fast's four verbs.

``prefill`` runs the prefix (the class token, or a t2i model's caption positions),
``decode_one_token`` one cached step, ``decode_n_tokens`` the loop, ``generate_tokens`` the
setup. Classifier-free guidance runs as ONE doubled batch ``[cond; uncond]`` (cond first, as
the reference), and the sampled token is fed to both halves. The unconditional half is the null
class (c2i) or the model's learned null caption under the prompt's own caption mask (t2i), as
the official ``generate()`` builds it. Known canvas positions are teacher-forced: the token is
still drawn (so a seed gives the same random stream with or without a mask) but the known one is kept.

The loop reads no value back to the host: positions are views of one preallocated
tensor, the fed token is written into a preallocated buffer, and the chosen tokens go
straight into the output grid.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Callable

import torch

from ..conditioning import Conditioning
from ..errors import InvalidInputError
from ..guidance import cfg_combine, llamagen_guided_step
from ..sampling import Randomness, SamplingParams, sample
from ..control.signal import ControlSignal
from .canvas import TokenCanvas
from .compiled import step_function, wants_compile
from .decoders import DecodeOptions
from .draft_store import DraftStore
from .speculative import decode_speculative, drafts_used

FAMILY = "llamagen"
Progress = Callable[[int, int], None]


@dataclasses.dataclass
class _Step:
    """Per-call constants of one generation (what the verbs below share)."""

    batch: int  # B: images
    guided: bool  # the model runs a doubled batch [cond; uncond]
    cfg: float
    cfg_interval: int
    params: SamplingParams
    generator: Randomness
    trace: dict | None
    compiled: bool  # run the compiled decode step (on CUDA with static shapes: attention over the whole cache)
    step: Callable  # the model's decode step (compiled.StepFunction), looked up once per generation
    control: ControlSignal | None = None  # condition tokens of a control adapter (ControlAR)
    prefix_mask: torch.Tensor | None = None  # t2i: (B or 2B, cls) bool, False = padded caption position


def _choose(logits: torch.Tensor, t: int, s: _Step, tokens_BL: torch.Tensor, known_BL: torch.Tensor) -> torch.Tensor:
    """Raw logits (B or 2B, V) of token t -> the token kept at t (B,), written into ``tokens_BL``."""
    if s.guided:
        cond, uncond = logits[: s.batch], logits[s.batch:]  # (B, V) each
        guided = cfg_combine(cond, uncond, s.cfg) if llamagen_guided_step(t, s.cfg_interval) else cond
    else:
        guided = logits
    if s.trace is not None:
        s.trace.setdefault("raw_logits", []).append(logits.detach().clone())
        s.trace.setdefault("guided_logits", []).append(guided.detach().clone())
    drawn = sample(guided, s.params, s.generator)  # (B,)
    chosen = torch.where(known_BL[:, t], tokens_BL[:, t], drawn)  # (B,)
    tokens_BL[:, t] = chosen
    return chosen


def prefill(model, labels: torch.Tensor, positions: torch.Tensor, s: _Step, tokens_BL: torch.Tensor,
            known_BL: torch.Tensor) -> torch.Tensor:
    """The prefix (class ids (NB,) or caption features (NB, cls, C)) -> token 0 (B,)."""
    cls = model.config.cls_token_num
    logits = model.prefill(labels, positions[:cls], cls, control=s.control, emb_mask=s.prefix_mask)  # (B or 2B, V)
    return _choose(logits, 0, s, tokens_BL, known_BL)


def decode_one_token(model, feed: torch.Tensor, t: int, positions: torch.Tensor, s: _Step,
                     tokens_BL: torch.Tensor, known_BL: torch.Tensor) -> torch.Tensor:
    """Feed token t-1 (in ``feed``, (B or 2B, 1)) at its position -> token t (B,)."""
    pos = model.config.cls_token_num + t - 1
    kv_len = None if s.compiled and s.step.static_shapes else pos + 1  # else attend the filled prefix only
    logits = s.step(s.compiled, feed, positions[pos:pos + 1], kv_len, s.control)  # (B or 2B, V)
    return _choose(logits, t, s, tokens_BL, known_BL)


def decode_n_tokens(model, first: torch.Tensor, start: int, n: int, positions: torch.Tensor, s: _Step,
                    tokens_BL: torch.Tensor, known_BL: torch.Tensor, progress: Progress | None) -> None:
    """Tokens start .. start+n-1, each fed back in place through one preallocated buffer."""
    copies = 2 if s.guided else 1
    feed = torch.empty(copies * s.batch, 1, dtype=torch.long, device=first.device)  # (B or 2B, 1)
    feed.view(copies, s.batch).copy_(first.expand(copies, s.batch))
    total = start + n
    for t in range(start, total):
        chosen = decode_one_token(model, feed, t, positions, s, tokens_BL, known_BL)
        feed.view(copies, s.batch).copy_(chosen.expand(copies, s.batch))
        if progress is not None:
            progress(t + 1, total)


def _prefix(model, cond: Conditioning, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """What the prefill embeds, for the (B or 2B) rows: class ids (c2i) or caption features and their mask
    (t2i), and whether guidance runs."""
    if model.config.is_t2i:
        return _captions(model, cond, device)
    if cond.text is not None:
        raise InvalidInputError("this is a class-conditional model: it takes class ids, not a text prompt")
    labels, guided = _labels(model, cond, device)
    return labels, None, guided


def _captions(model, cond: Conditioning, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(NB, cls, C) caption features and (NB, cls) bool mask, [prompt; negative] when guided. The default
    negative is the learned null caption (``zeros_like(cond) + uncond_embedding`` in the reference), which
    keeps the prompt's mask."""
    text, c = cond.text, model.config
    if text is None:
        raise InvalidInputError("this is a text-to-image model: it needs a prompt (encoded text), not class ids")
    if tuple(text.embeddings.shape[1:]) != (c.cls_token_num, c.caption_dim):
        raise InvalidInputError(f"encoded prompts {tuple(text.embeddings.shape)} do not fit this model: it takes "
                                f"(B, {c.cls_token_num}, {c.caption_dim}) caption features (text length "
                                f"{c.cls_token_num}, encoder width {c.caption_dim})")
    dtype = model.cls_embedding.uncond_embedding.dtype
    emb, mask = text.embeddings.to(device, dtype), text.mask.to(device).bool()  # (B, cls, C), (B, cls)
    guided = cond.cfg > 1.0
    if guided:
        if text.negative is None:
            neg, neg_mask = torch.zeros_like(emb) + model.cls_embedding.null_caption(), mask
        else:
            neg, neg_mask = text.negative.to(device, dtype), text.negative_mask.to(device).bool()
        emb, mask = torch.cat([emb, neg]), torch.cat([mask, neg_mask])  # (2B, cls, C), (2B, cls)
    return emb, mask, guided


def _labels(model, cond: Conditioning, device: torch.device) -> tuple[torch.Tensor, bool]:
    """(B,) or (2B,) labels ([cond; uncond] when guided) and whether guidance runs."""
    if cond.style_ids is not None:
        raise InvalidInputError("raster (LlamaGen) models have no styles: use style 'any'")
    labels = torch.tensor(cond.class_ids, dtype=torch.long)
    model.check_labels(labels)
    guided = cond.cfg > 1.0
    if guided:
        if cond.negative_class_ids is None:
            neg = torch.full_like(labels, model.num_classes)  # the null class row
            if model.config.class_rows <= model.num_classes:
                raise InvalidInputError("this model has no null class (class_dropout_prob=0): use cfg <= 1 or "
                                        "give negative class ids")
        else:
            neg = torch.tensor(cond.negative_class_ids, dtype=torch.long)
            model.check_labels(neg, allow_null=True)
        labels = torch.cat([labels, neg])
    return labels.to(device), guided


def _canvas_tensors(model, canvas: TokenCanvas | None, batch: int, device: torch.device,
                    tokenizer_id: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    g = model.grid_size
    if canvas is None:
        canvas = TokenCanvas.empty(FAMILY, tokenizer_id, [(g, g)], batch, device)
    if canvas.family != FAMILY:
        raise InvalidInputError(f"these tokens come from a {canvas.family!r} model; a {FAMILY} model needs its own")
    if canvas.shapes != [(g, g)]:
        raise InvalidInputError(f"token grids {canvas.shapes} do not match the model's {g}x{g} grid")
    canvas = canvas.expand_batch(batch) if canvas.batch == 1 else canvas
    if canvas.batch != batch:
        raise InvalidInputError(f"canvas batch {canvas.batch} does not match {batch} class ids")
    tokens_BL = canvas.grids[0].reshape(batch, g * g).to(device, copy=True)  # (B, L), written in place
    known_BL = canvas.known[0].reshape(batch, g * g).to(device)  # (B, L)
    vocab = model.config.vocab_size
    if known_BL.any() and (int(tokens_BL[known_BL].min()) < 0 or int(tokens_BL[known_BL].max()) >= vocab):
        raise InvalidInputError(f"known tokens must be in [0, {vocab})")
    return tokens_BL, known_BL, canvas.tokenizer_id


@torch.no_grad()
def generate_tokens(model, cond: Conditioning, canvas: TokenCanvas | None, params: SamplingParams,
                    generator: Randomness, progress: Progress | None = None,
                    trace: dict | None = None, *, tokenizer_id: str = FAMILY,
                    compile: str | None = None, decode: DecodeOptions | None = None,
                    stats: dict | None = None, draft_store: DraftStore | None = None) -> TokenCanvas:
    """Generate (or complete) a raster token grid; returns a fully known canvas (B, g, g).

    ``params.top_p_style`` is forced to LlamaGen's rule. ``progress(step, total)`` runs once per
    token and may raise CancelledError to stop. ``trace`` (a dict) receives per step the raw
    logits (B or 2B, V) under "raw_logits" and the guided ones (B, V) under "guided_logits".
    ``compile``: "auto" | "on" | "off" for the decode step (None: the process default, see compiled.py).
    ``decode``: the strategy (plain, sjd, gsd; decoders.py); ``stats`` (a dict) receives "forwards", and for
    the speculative ones "drafts" (their source) and "tokens_per_forward" (how many forwards committed
    how many tokens: {"1": 30, "8": 2, ...}).
    ``draft_store``: the model's grids for speculative drafts (draft_store.py; None: it ships none).
    """
    device = model.output.weight.device
    labels, prefix_mask, guided = _prefix(model, cond, device)
    B = cond.batch
    tokens_BL, known_BL, tok_id = _canvas_tensors(model, canvas, B, device, tokenizer_id)
    if params.top_p_style != "llamagen":
        params = dataclasses.replace(params, top_p_style="llamagen")
    L, cls = model.config.block_size, model.config.cls_token_num
    model.setup_caches(labels.shape[0], cls + L)
    positions = torch.arange(cls + L, device=device)  # (cls + L,) sliced into views per step
    control = cond.control.signal(model, B, guided) if cond.control is not None else None
    step = step_function(model, "decode_step", dynamic=device.type != "cuda")  # CUDA graphs need static shapes
    s = _Step(B, guided, float(cond.cfg), int(cond.cfg_interval), params, generator, trace,
              wants_compile(compile, device), step, control, prefix_mask)
    decode = decode or DecodeOptions()
    if decode.strategy == "plain":
        first = prefill(model, labels, positions, s, tokens_BL, known_BL)
        if progress is not None:
            progress(1, L)
        decode_n_tokens(model, first, 1, L - 1, positions, s, tokens_BL, known_BL, progress)
        if stats is not None:
            stats.update(forwards=L, decode=decode.strategy, tokens=L)
    else:
        committed = decode_speculative(model, labels, positions, s, tokens_BL, known_BL, progress,
                                       decode.speculative, lambda: prefill(model, labels, positions, s, tokens_BL,
                                                                           known_BL), draft_store)
        if stats is not None:
            per = Counter(committed)
            stats.update(forwards=len(committed), decode=decode.strategy, tokens=L,
                         drafts=drafts_used(decode.speculative.init, draft_store),
                         tokens_per_forward={str(k): per[k] for k in sorted(per)})
    g = model.grid_size
    return TokenCanvas.from_codes(FAMILY, tok_id, [tokens_BL.view(B, g, g).clone()])
