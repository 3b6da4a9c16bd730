"""Retrieval drafts for speculative decoding: a store of token grids a raster model ships with.

Jacobi drafts are drawn under the previous forward's context; right after a rejection that context is
stale, and a model that is sure of each token given its exact neighbours then rejects the next draft
too. A store of real token grids (the model's training grids, REST-style retrieval) drafts from the
committed tokens instead: the window is copied from the store grid that matches the last committed
tokens (one grid row of them) at the same positions, among the grids of the request's class when the
store is labelled. A draft from the store is a deterministic function of the committed tokens, so its
proposal is one-hot and speculative verification stays exact; where no grid matches, the Jacobi draft
stays. How much it helps depends on how close the model's images are to the store's: a model that
reproduces its training grids (the bundled emoji-raster) accepts whole rows, one trained on far more
images than it can memorise accepts much less.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, InvalidInputError


INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.uint32, torch.int64,
                  torch.uint64)


@dataclass(frozen=True)
class DraftStore:
    """A model's token grids, held as int32 (tokens) on the model's device. The search compares every
    grid's context with every row's once per forward: a (B, N, context) test, cheap for thousands of
    grids; a store of millions would want its grids indexed by their context first."""

    tokens: torch.Tensor  # (N, L) int32, raster order
    labels: torch.Tensor | None  # (N,) int64 class ids, or None: search every grid

    def __post_init__(self) -> None:
        t, lab = self.tokens, self.labels
        if t.ndim != 2 or t.shape[0] == 0 or t.dtype not in INTEGER_DTYPES:
            raise InvalidInputError(f"a draft store holds (N >= 1, L) integer token grids, got {tuple(t.shape)} "
                                    f"{t.dtype}")
        if lab is not None and (lab.shape != (t.shape[0],) or lab.dtype not in INTEGER_DTYPES):
            raise InvalidInputError(f"draft store labels must be {t.shape[0]} integer class ids, got "
                                    f"{tuple(lab.shape)} {lab.dtype}")
        object.__setattr__(self, "tokens", t.to(torch.int32))
        object.__setattr__(self, "labels", None if lab is None else lab.to(torch.int64))

    def to(self, device: torch.device | str) -> "DraftStore":
        return DraftStore(self.tokens.to(device), None if self.labels is None else self.labels.to(device))

    def check_grid(self, length: int) -> None:
        """The grids must be as long as the model's token sequence."""
        if self.tokens.shape[1] != length:
            raise InvalidInputError(f"the draft store's grids are {self.tokens.shape[1]} tokens long; this model "
                                    f"draws {length}")

    def propose(self, tokens_BL: torch.Tensor, labels: torch.Tensor | None, start: int, width: int,
                context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Drafts (B, width) int64 for positions start.. and whether each row found a grid (B,) bool:
        the first store grid (of the row's class, when both have labels) matching the ``context``
        committed tokens before ``start`` exactly. A row without one gets some grid's tokens and False."""
        B, dev = tokens_BL.shape[0], tokens_BL.device
        ctx = min(context, start)
        store = self.tokens.to(dev)  # a no-op: the store lives on the model's device
        match = (store[None, :, start - ctx:start] == tokens_BL[:, None, start - ctx:start]).all(-1)  # (B, N)
        if self.labels is not None and labels is not None:
            match &= self.labels.to(dev)[None, :] == labels[:B, None]  # the conditional rows (CFG doubles them)
        found = match.any(1)
        best = match.to(torch.int8).argmax(1)
        return store[best, start:start + width].long(), found


def load_draft_store(entry: Any, base_dir: Path, source: str, block_size: int, vocab_size: int,
                     num_classes: int | None, device: torch.device | str = "cpu") -> DraftStore | None:
    """A manifest's "draft_store": {"file": <safetensors with "tokens" (N, L) and optional "labels" (N,)>}."""
    from ..checkpoint import read_checkpoint
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise CheckpointError(f"{source}: 'draft_store' must be an object with a 'file'")
    path = Path(base_dir) / entry["file"]
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{source}: the draft store must be a .safetensors file, got {path.name!r}")
    data = read_checkpoint(path)
    tokens, labels = data.get("tokens"), data.get("labels")
    if tokens is None or tokens.ndim != 2 or tokens.shape[1] != block_size or tokens.shape[0] == 0:
        shape = None if tokens is None else tuple(tokens.shape)
        raise CheckpointError(f"{path}: 'tokens' must be (N >= 1, {block_size}) grids, got {shape}")
    if tokens.dtype not in INTEGER_DTYPES:
        raise CheckpointError(f"{path}: 'tokens' must be integer ids in [0, {vocab_size}), got {tokens.dtype}")
    tokens = tokens.to(torch.int64)  # uint64 ids past 2**63 turn negative here and are refused below
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
        raise CheckpointError(f"{path}: 'tokens' must be integer ids in [0, {vocab_size})")
    if labels is not None:
        if labels.shape != (tokens.shape[0],) or labels.dtype not in INTEGER_DTYPES:
            raise CheckpointError(f"{path}: 'labels' must be {tokens.shape[0]} integer class ids")
        labels = labels.to(torch.int64)
        if num_classes is None or int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise CheckpointError(f"{path}: 'labels' must be class ids of the generator (it has "
                                  f"{num_classes or 'no'} classes)")
    return DraftStore(tokens, labels).to(device)
