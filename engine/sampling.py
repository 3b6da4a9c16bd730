"""Pure sampling helpers: logits in, tokens out.

Every random function takes an explicit ``torch.Generator`` so that a seed
reproduces an image on the same device; there is no module state.

The two reference implementations filter top-p slightly differently (VAR sorts
ascending and drops the low tail of mass ``<= 1 - p``; LlamaGen/HF sorts
descending and drops tokens once the mass above them exceeds ``p``).  They only
differ on ties and rounding, but seeded parity needs both, hence ``top_p_style``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .errors import InvalidInputError

TopPStyle = Literal["var", "llamagen"]


@dataclass(frozen=True)
class SamplingParams:
    """Sampler settings shared by both families. ``top_k=0`` / ``top_p>=1`` (or 0) mean off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    top_p_style: TopPStyle = "var"
    more_smooth: bool = False  # VAR's gumbel soft-embedding (visualisation only)

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise InvalidInputError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.top_k < 0:
            raise InvalidInputError(f"top_k must be >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 <= self.top_p <= 1.0:
            raise InvalidInputError(f"top_p must be in [0, 1] (0 or 1 = off), got {self.top_p!r}")

    @property
    def top_p_active(self) -> bool:
        return 0.0 < self.top_p < 1.0


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """LlamaGen's rule: divide by max(T, 1e-5), so T=0 is (numerically) greedy."""
    if temperature == 1.0:
        return logits
    return logits / max(temperature, 1e-5)


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of logits to remove: everything below the k-th largest (ties kept)."""
    k = min(k, logits.shape[-1])
    kth = logits.topk(k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
    return logits < kth


def top_p_mask(logits: torch.Tensor, p: float, style: TopPStyle = "var") -> torch.Tensor:
    """Boolean mask of logits outside the nucleus of mass ``p`` (the top token is always kept)."""
    if style == "var":
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        remove_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - p)
        remove_sorted[..., -1:] = False
    elif style == "llamagen":
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        above = cum > p
        remove_sorted = torch.zeros_like(above)
        remove_sorted[..., 1:] = above[..., :-1]
    else:
        raise InvalidInputError(f"unknown top_p_style {style!r}; expected 'var' or 'llamagen'")
    return remove_sorted.scatter(-1, sorted_idx, remove_sorted)


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p; removed entries become -inf (a new tensor)."""
    logits = apply_temperature(logits, params.temperature)
    if params.top_k > 0:
        logits = logits.masked_fill(top_k_mask(logits, params.top_k), -torch.inf)
    if params.top_p_active:
        logits = logits.masked_fill(top_p_mask(logits, params.top_p, params.top_p_style), -torch.inf)
    return logits


@dataclass(frozen=True)
class RequestGenerators:
    """The randomness of several requests run as one batch: request i owns the next ``rows[i]`` rows
    and draws them from its own generator, in the same call it makes when it runs alone, so an image
    never depends on what it was batched with."""

    generators: tuple[torch.Generator | None, ...]
    rows: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.generators) != len(self.rows) or min(self.rows, default=0) < 1:
            raise InvalidInputError(f"one generator per request and >= 1 row each; got {len(self.generators)} "
                                    f"generators for rows {self.rows}")

    def parts(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Generator | None]]:
        if x.shape[0] != sum(self.rows):
            raise InvalidInputError(f"{x.shape[0]} rows for requests of {self.rows} rows")
        return list(zip(x.split(list(self.rows)), self.generators))


Randomness = torch.Generator | RequestGenerators | None


def sample_from_logits(logits: torch.Tensor, generator: Randomness) -> torch.Tensor:
    """One multinomial draw per row over the last dim, in a single call: [..., V] -> [...] int64.

    A single call over all rows matters for seeded parity: the reference
    implementations draw a whole scale (or step) at once.
    """
    if isinstance(generator, RequestGenerators):
        return torch.cat([sample_from_logits(part, g) for part, g in generator.parts(logits)])
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    probs = logits.float().softmax(dim=-1).reshape(-1, vocab)  # (N, V)
    idx = torch.multinomial(probs, num_samples=1, replacement=True, generator=generator)
    return idx.view(lead)


def sample(logits: torch.Tensor, params: SamplingParams, generator: Randomness) -> torch.Tensor:
    """Filter then draw: [..., V] logits -> [...] token ids."""
    return sample_from_logits(filter_logits(logits, params), generator)


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: Randomness) -> torch.Tensor:
    """Soft (hard=False) gumbel-softmax over the last dim with an explicit generator."""
    if isinstance(generator, RequestGenerators):
        return torch.cat([gumbel_softmax(part, tau, g) for part, g in generator.parts(logits)])
    u = torch.empty_like(logits, memory_format=torch.legacy_contiguous_format)
    gumbels = -u.exponential_(generator=generator).log()  # Gumbel(0, 1)
    return ((logits + gumbels) / tau).softmax(dim=-1)
