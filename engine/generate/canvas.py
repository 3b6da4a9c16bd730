"""TokenCanvas: the AR_TOKENS graph type and the input of constrained generation.

A canvas is a list of token grids (one per scale for next-scale models, a single
grid for raster models) plus, for each grid, a ``known`` mask: True where the
token is given and must be teacher-forced, False where it is to be generated.
Generation of a fresh image is a canvas with nothing known.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InvalidInputError


@dataclass
class TokenCanvas:
    family: str  # "var" | "llamagen"
    tokenizer_id: str  # tokens are only meaningful for the tokenizer that made them
    grids: list[torch.Tensor]  # each (B, h, w) int64
    known: list[torch.Tensor]  # each (B, h, w) bool, True = keep (teacher-force)
    # the decoder input accumulated while generating these exact grids (VAR's f_hat); lets decode
    # skip recomputing it. Any change of grids makes a new canvas without it.
    decoder_input: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.grids or len(self.grids) != len(self.known):
            raise InvalidInputError(
                f"TokenCanvas needs one known-mask per grid; got {len(self.grids)} grids and {len(self.known)} masks")
        B = self.grids[0].shape[0]
        for i, (g, k) in enumerate(zip(self.grids, self.known)):
            if g.ndim != 3 or g.shape != k.shape or g.shape[0] != B:
                raise InvalidInputError(
                    f"TokenCanvas grid {i}: tokens {tuple(g.shape)} and mask {tuple(k.shape)} must both be (B={B}, h, w)")
            if g.dtype != torch.int64 or k.dtype != torch.bool:
                raise InvalidInputError(f"TokenCanvas grid {i}: tokens must be int64 and mask bool, got {g.dtype}/{k.dtype}")

    @classmethod
    def empty(cls, family: str, tokenizer_id: str, shapes: list[tuple[int, int]], batch: int,
              device: torch.device | str = "cpu") -> "TokenCanvas":
        grids = [torch.zeros(batch, h, w, dtype=torch.int64, device=device) for h, w in shapes]
        known = [torch.zeros(batch, h, w, dtype=torch.bool, device=device) for h, w in shapes]
        return cls(family, tokenizer_id, grids, known)

    @classmethod
    def from_codes(cls, family: str, tokenizer_id: str, grids: list[torch.Tensor]) -> "TokenCanvas":
        """A fully known canvas (e.g. the tokens of an encoded image)."""
        return cls(family, tokenizer_id, [g.long() for g in grids], [torch.ones_like(g, dtype=torch.bool) for g in grids])

    @property
    def batch(self) -> int:
        return self.grids[0].shape[0]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(g.shape[1], g.shape[2]) for g in self.grids]

    @property
    def device(self) -> torch.device:
        return self.grids[0].device

    def to(self, device: torch.device | str) -> "TokenCanvas":
        fhat = None if self.decoder_input is None else self.decoder_input.to(device)
        return TokenCanvas(self.family, self.tokenizer_id, [g.to(device) for g in self.grids],
                           [k.to(device) for k in self.known], fhat)

    def with_known(self, known: list[torch.Tensor]) -> "TokenCanvas":
        """Same tokens, another known-mask (e.g. an inpainting mask per scale)."""
        return TokenCanvas(self.family, self.tokenizer_id, list(self.grids), [k.bool() for k in known],
                           self.decoder_input)

    def expand_batch(self, batch: int) -> "TokenCanvas":
        """Repeat a batch-1 canvas to ``batch`` rows (one source image, several samples)."""
        if self.batch == batch:
            return self
        if self.batch != 1:
            raise InvalidInputError(f"cannot expand a canvas of batch {self.batch} to batch {batch}")
        return TokenCanvas(self.family, self.tokenizer_id, [g.expand(batch, -1, -1).clone() for g in self.grids],
                           [k.expand(batch, -1, -1).clone() for k in self.known])

    def check_compatible(self, family: str, tokenizer_id: str, shapes: list[tuple[int, int]]) -> None:
        if self.family != family or self.tokenizer_id != tokenizer_id:
            raise InvalidInputError(
                f"these tokens come from {self.family}/{self.tokenizer_id!r} but the model uses {family}/{tokenizer_id!r}")
        if self.shapes != list(shapes):
            raise InvalidInputError(f"token grids {self.shapes} do not match the model's grids {list(shapes)}")
