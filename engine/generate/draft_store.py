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

from ..errors import CheckpointError


@dataclass(frozen=True)
class DraftStore:
    tokens: torch.Tensor  # (N, L) int64, raster order
    labels: torch.Tensor | None  # (N,) int64 class ids, or None: search every grid

    def propose(self, tokens_BL: torch.Tensor, labels: torch.Tensor | None, start: int, width: int,
                context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Drafts (B, width) for positions start.. and whether each row found a grid (B,) bool: the
        store grid (of the row's class, when both have labels) matching the ``context`` committed
        tokens before ``start`` exactly; rows without one get zeros and False."""
        B = tokens_BL.shape[0]
        ctx = min(context, start)
        store = self.tokens.to(tokens_BL.device)
        match = (store[None, :, start - ctx:start] == tokens_BL[:, None, start - ctx:start]).all(-1)  # (B, N)
        if self.labels is not None and labels is not None:
            match &= self.labels.to(tokens_BL.device)[None, :] == labels[:B, None]
        found = match.any(1)
        best = match.to(torch.int8).argmax(1)  # first matching grid per row
        return store[best, start:start + width], found


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
    if tokens.dtype.is_floating_point or int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
        raise CheckpointError(f"{path}: 'tokens' must be integer ids in [0, {vocab_size})")
    if labels is not None:
        if labels.shape != (tokens.shape[0],) or labels.dtype.is_floating_point:
            raise CheckpointError(f"{path}: 'labels' must be {tokens.shape[0]} integer class ids")
        if num_classes is None or int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise CheckpointError(f"{path}: 'labels' must be class ids of the generator (it has "
                                  f"{num_classes or 'no'} classes)")
        labels = labels.to(device=device, dtype=torch.int64)
    return DraftStore(tokens.to(device=device, dtype=torch.int64), labels)
