"""Speculative Jacobi decoding (SJD) for raster models, and its grouped, lossy relative (GSD).

A plain raster model needs one forward per token. SJD (Teng et al. 2024) keeps a window of drafted
future tokens, runs the whole window through the model in one forward (``decode_window``), and
verifies the drafts left to right with the speculative-sampling rule: draft ``d ~ Q`` is accepted with
probability ``min(1, P(d) / Q(d))``, where ``P`` is the model's processed distribution at that position
(CFG, temperature, top-k / top-p: exactly what plain sampling draws from); at the first rejection a
token is drawn from the residual ``norm(max(0, P - Q))`` and the window moves on. Every committed
token is an exact sample of ``P`` given the committed prefix, so the output distribution is the
model's. The drafts that were not reached are re-drafted from the distributions this forward computed
for them (the Jacobi step); tokens entering the window are drafted by ``init``. A model that ships a
draft store (draft_store.py) has each window redrafted from the store grid matching the committed
tokens, where one does: after a rejection the Jacobi drafts were drawn under the rejected token, the
store's under the committed one.

GSD (grouped speculative decoding, 2025) relaxes the test: a draft that falls in the most probable
set of the model's distribution (guided, at the sampling temperature, before top-k / top-p) covering
``group_mass`` of its probability is accepted outright, since such tokens are near-interchangeable in
a VQ codebook; fewer forwards, no longer exact (``group_mass = 0`` is SJD). The group is taken before
the truncation because a Jacobi draft was drawn under an older context: when it misses, it mostly
misses the truncated support altogether, so a group inside that support would accept nothing more.

The KV cache needs no roll-back: a window writes its keys / values at its positions, and the next
window starts at the first uncommitted position and overwrites whatever the rejected drafts left.
Known positions (inpaint / outpaint) are never drafted: their token is fixed and always accepted.
With a batch, all rows commit the same number of tokens per forward (the smallest row's), which keeps
one cache position per step and leaves each row exact (rows are independent).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..choices import DRAFT_INITS
from ..errors import InvalidInputError
from ..guidance import cfg_combine, llamagen_guided_step
from ..sampling import apply_temperature, filter_logits
from .draft_store import DraftStore

INITS = ("auto", "above", "uniform", "store")
if INITS != DRAFT_INITS:  # the front ends list engine/choices.py
    raise ImportError(f"engine/choices.py lists draft inits {DRAFT_INITS}, speculative.py has {INITS}")


@dataclass(frozen=True)
class SpeculativeParams:
    """``window``: drafts verified per forward (None: one grid row, what "above" drafts from committed
    tokens; past about a row the drafts are rarely accepted and only make the forward dearer);
    ``init``: how the window is drafted ("uniform": a random token entering it; "above": the token one
    grid row up, a strong guess in images; "store": copied from the model's draft store where a grid
    there matches the committed tokens (draft_store.py), else as "above"; "auto": "store" when the
    model ships a store, else "above"); ``group_mass``: GSD's relaxed acceptance (0 = exact SJD)."""

    window: int | None = None
    init: str = "auto"
    group_mass: float = 0.0

    def __post_init__(self) -> None:
        if self.window is not None and not 1 <= self.window <= 1024:
            raise InvalidInputError(f"speculative window must be in [1, 1024], got {self.window!r}")
        if self.init not in INITS:
            raise InvalidInputError(f"draft init {self.init!r} is not one of {', '.join(INITS)}")
        if not 0.0 <= self.group_mass < 1.0:
            raise InvalidInputError(f"group_mass must be in [0, 1), got {self.group_mass!r}")


def guided_window(logits: torch.Tensor, start: int, s) -> torch.Tensor:
    """Raw window logits (B or 2B, w, V) for tokens start.. -> the guided logits (B, w, V): CFG by
    LlamaGen's interval rule per token."""
    B, w = s.batch, logits.shape[1]
    guided = logits[:B]
    if s.guided:
        mixed = cfg_combine(logits[:B], logits[B:], s.cfg)
        use = torch.tensor([llamagen_guided_step(start + j, s.cfg_interval) for j in range(w)], device=logits.device)
        guided = torch.where(use.view(1, w, 1), mixed, guided)
    return guided


def window_probs(guided: torch.Tensor, s) -> torch.Tensor:
    """Guided window logits -> the distributions plain sampling would draw from (temperature, top-k, top-p)."""
    return filter_logits(guided, s.params).float().softmax(dim=-1)


def model_probs(guided: torch.Tensor, s) -> torch.Tensor:
    """Guided window logits -> the model's distributions at the sampling temperature, before top-k / top-p
    truncation: what GSD groups on (a draft the truncation cut can still be one of the likely tokens)."""
    return apply_temperature(guided, s.params.temperature).float().softmax(dim=-1)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of (..., V) probabilities -> (...): the exponential race, argmax p / E with
    E ~ Exp(1) (= -log U), samples p exactly and never a zero-probability token, at under half the CPU
    time of ``torch.multinomial`` (it runs once per forward, so it shows in the wall time). U is drawn
    in float64 and kept above 0: float32's 2^-24 grid would bias the unlikely tokens, and U = 0 would
    make every score 0."""
    u = torch.rand(probs.shape, dtype=torch.float64, device=probs.device, generator=generator)
    return (probs / u.clamp_min_(torch.finfo(torch.float64).tiny).log_().neg_().to(probs.dtype)).argmax(-1)


def _one_hot(tokens: torch.Tensor, V: int) -> torch.Tensor:
    return torch.zeros(*tokens.shape, V, device=tokens.device).scatter_(-1, tokens.unsqueeze(-1), 1.0)


class _Window:
    """Drafts (B, w) and the distributions they were drawn from (B, w, V) for positions start..start+w-1.
    ``init`` drafts the tokens entering the window ("above" or "uniform"); a ``store`` then redrafts the
    rows it has a matching grid for, with the request's class ``labels`` (None: any grid)."""

    def __init__(self, tokens_BL: torch.Tensor, known_BL: torch.Tensor, V: int, grid: int, init: str,
                 generator: torch.Generator | None, store: DraftStore | None = None,
                 labels: torch.Tensor | None = None) -> None:
        self.tokens_BL, self.known_BL, self.V, self.grid, self.init, self.generator = (
            tokens_BL, known_BL, V, grid, init, generator)
        self.store, self.labels = store, labels
        self.any_known = bool(known_BL.any())  # else the fixed-token masking is skipped (a few ops a step)
        B = tokens_BL.shape[0]
        self.draft = tokens_BL.new_empty(B, 0)
        self.q = torch.empty(B, 0, V, device=tokens_BL.device)

    def fill(self, start: int, width: int) -> None:
        """Drafts for the window start..start+width-1: the new positions by ``init``, then the store's."""
        self.extend(start, width)
        if self.store is not None:
            self.retrieve(start, width)

    def retrieve(self, start: int, width: int) -> None:
        """Redraft the window of each row the store has a grid for (its proposal: one-hot)."""
        drafts, found = self.store.propose(self.tokens_BL, self.labels, start, width, self.grid)
        if self.any_known:
            span = slice(start, start + width)
            drafts = torch.where(self.known_BL[:, span], self.tokens_BL[:, span], drafts)
        self.draft = torch.where(found[:, None], drafts, self.draft[:, :width])
        self.q = torch.where(found[:, None, None], _one_hot(drafts, self.V), self.q[:, :width])

    def extend(self, start: int, width: int) -> None:
        """Draft the positions that enter the window (start+len .. start+width-1) by ``init``."""
        have = self.draft.shape[1]
        if width <= have:
            return
        if self.init == "above" and start + have >= self.grid and width <= self.grid:
            new = torch.arange(start + have, start + width, device=self.tokens_BL.device)
            above = self.tokens_BL[:, new - self.grid]  # every source is committed: one gather
            fixed = torch.where(self.known_BL[:, new], self.tokens_BL[:, new], above) if self.any_known else above
            self.draft = torch.cat([self.draft, fixed], 1)
            self.q = torch.cat([self.q, _one_hot(above, self.V)], 1)
            return
        B, dev = self.draft.shape[0], self.draft.device
        cols, qs = list(self.draft.unbind(1)), [self.q]
        for j in range(start + have, start + width):
            src = j - self.grid  # the token one grid row up: committed, or itself a draft in the window
            if self.init == "above" and src >= 0:
                tok = self.tokens_BL[:, src] if src < start else cols[src - start]
                qs.append(_one_hot(tok, self.V).unsqueeze(1))
            else:
                tok = torch.randint(self.V, (B,), device=dev, generator=self.generator)
                qs.append(torch.full((B, 1, self.V), 1.0 / self.V, device=dev))
            cols.append(torch.where(self.known_BL[:, j], self.tokens_BL[:, j], tok))  # fixed tokens: not drafted
        self.draft, self.q = torch.stack(cols, 1), torch.cat(qs, 1)

    def advance(self, start: int, committed: int, probs: torch.Tensor, drawn: torch.Tensor) -> None:
        """Drop the committed positions; the rest of the window (now from ``start``) is re-drafted from
        this forward's ``probs``: ``drawn`` (B, w - c) was sampled from them (the Jacobi step:
        conditioned on the old drafts, still a valid proposal)."""
        if self.any_known:
            span = slice(start, start + drawn.shape[1])
            drawn = torch.where(self.known_BL[:, span], self.tokens_BL[:, span], drawn)
        self.draft, self.q = drawn, probs[:, committed:]


def verify(draft: torch.Tensor, q: torch.Tensor, p: torch.Tensor, known: torch.Tensor, grouped: torch.Tensor | None,
           generator: torch.Generator | None) -> torch.Tensor:
    """Which drafts (B, w) are accepted: with probability min(1, p/q), or outright where ``grouped``
    (GSD: the draft is in its position's group; None for SJD)."""
    p_d, q_d = p.gather(-1, draft.unsqueeze(-1)).squeeze(-1), q.gather(-1, draft.unsqueeze(-1)).squeeze(-1)
    u = torch.rand(draft.shape, device=draft.device, generator=generator)
    accepted = known | (u * q_d < p_d)  # u < p/q without dividing by a zero q
    return accepted if grouped is None else accepted | grouped


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over the last dim: what a rejected position draws from (p where p == q: the
    draft is always accepted there anyway)."""
    r = (p - q).clamp_min(0)
    r = torch.where(r.sum(-1, keepdim=True) <= 0, p, r)
    return r / r.sum(-1, keepdim=True)


def in_top_mass(p: torch.Tensor, tokens: torch.Tensor, mass: float) -> torch.Tensor:
    """Whether each token is among the most probable tokens of p that together hold ``mass`` (the top one always)."""
    sorted_p, order = p.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly above each sorted token
    inside_sorted = before < mass
    inside = torch.zeros_like(inside_sorted).scatter_(-1, order, inside_sorted)
    return inside.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def draft_source(init: str, store: DraftStore | None) -> tuple[str, DraftStore | None]:
    """``init`` resolved against the model: (how new positions are drafted, the store to redraft from)."""
    if init == "store" and store is None:
        raise InvalidInputError("draft init 'store' needs a model that ships a draft store; this one has none "
                                "(use 'above' or 'auto')")
    use = store if init in ("auto", "store") else None
    return ("above" if init in ("auto", "store") else init), use


def drafts_used(init: str, store: DraftStore | None) -> str:
    """What the drafts come from, for reports: "store" (Jacobi where no grid matches), "above" or "uniform"."""
    how, use = draft_source(init, store)
    return "store" if use is not None else how


def decode_speculative(model, labels: torch.Tensor, positions: torch.Tensor, s, tokens_BL: torch.Tensor,
                       known_BL: torch.Tensor, progress, spec: SpeculativeParams, first_token,
                       store: DraftStore | None = None) -> list[int]:
    """Fill tokens_BL (B, L) in place after token 0 (``first_token`` runs the prefill); returns the tokens
    each forward committed (its length: the forwards; the prefill's 1 first). ``labels``: the prefix
    condition (class ids pick the store's grids; caption features do not)."""
    cls, L, V, g = model.config.cls_token_num, model.config.block_size, model.config.vocab_size, model.grid_size
    init, store = draft_source(spec.init, store)
    if store is not None:
        store.check_grid(L)
    first_token()
    if progress is not None:
        progress(1, L)
    committed, n = [1], 1
    copies = 2 if s.guided else 1
    window = spec.window or g
    win = _Window(tokens_BL, known_BL, V, g, init, s.generator, store, labels if labels.ndim == 1 else None)
    while n < L:
        w = min(window, L - n)
        win.fill(n, w)
        inp = torch.cat([tokens_BL[:, n - 1:n], win.draft[:, :w - 1]], 1)
        inp = inp.repeat(copies, 1) if copies > 1 else inp  # (NB, w)
        pos = cls + n - 1
        logits = model.decode_window(inp, positions[pos:pos + w], pos + w, control=s.control)  # (NB, w, V)
        guided = guided_window(logits, n, s)  # (B, w, V)
        p = window_probs(guided, s)
        known = known_BL[:, n:n + w]
        grouped = None if spec.group_mass <= 0 else in_top_mass(model_probs(guided, s), win.draft[:, :w],
                                                                 spec.group_mass)
        accepted = verify(win.draft[:, :w], win.q[:, :w], p, known, grouped, s.generator)
        run = accepted.cumprod(1).sum(1)  # (B,) drafts accepted before each row's first rejection
        c = int(run.min().clamp(max=w - 1)) + 1  # the one host sync per forward
        # every row accepted its drafts before c - 1; at c - 1 a row that rejected takes a residual
        # sample. One draw gives it and the next drafts (this forward's distributions after c - 1).
        drawn = _draw(torch.cat([residual(p[:, c - 1], win.q[:, c - 1]).unsqueeze(1), p[:, c:]], 1), s.generator)
        last = torch.where(accepted[:, c - 1], win.draft[:, c - 1], drawn[:, 0])
        chosen = torch.cat([win.draft[:, :c - 1], last.unsqueeze(1)], 1)
        tokens_BL[:, n:n + c] = torch.where(known[:, :c], tokens_BL[:, n:n + c], chosen) if win.any_known else chosen
        n += c
        committed.append(c)
        win.advance(n, c, p, drawn[:, 1:])
        if progress is not None:
            progress(n, L)
    return committed
