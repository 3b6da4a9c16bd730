"""Text-encoder output -> the caption condition of a LlamaGen t2i model.

A T5 tokenizer pads on the right: a prompt of n tokens fills rows 0..n-1 of the (B, T, C) features
and its mask is n ones then zeros. LlamaGen t2i was trained on left-padded captions (its dataset writes
the features to the last n rows), and ``sample_t2i.py`` left-pads at inference by default:

- left (default): per row, the padded rows move to the front and the n real rows keep their order at
  the end (``rows[n:] ++ rows[:n]``), the mask is reversed, and padded rows are zeroed;
- right (``--no-left-padding``): the features as they come, padded rows zeroed, the mask unchanged.

Real T5 features are not zero at padded positions, so the zeroing matters; the mask then hides those
positions from attention (models/llamagen.py).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..conditioning import TextCondition
from ..errors import InvalidInputError


def caption_condition(emb: torch.Tensor, mask: torch.Tensor,
                      left_padding: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder features (B, T, C) and the tokenizer's right-padded mask (B, T) -> (cond (B, T, C), emb_mask (B, T)).

    The mask keeps its dtype; ``cond`` has the features' dtype and is exactly 0 at padded positions.
    """
    if emb.ndim != 3 or tuple(mask.shape) != tuple(emb.shape[:2]):
        raise InvalidInputError(f"caption features {tuple(emb.shape)} and mask {tuple(mask.shape)}: need (B, T, C) "
                                f"and (B, T)")
    keep = mask.bool()  # (B, T)
    n = keep.sum(dim=1)  # (B,) real tokens per row
    T = emb.shape[1]
    cols = torch.arange(T, device=mask.device)
    if not torch.equal(keep, cols[None, :] < n[:, None]):
        raise InvalidInputError("the caption mask must be right-padded (ones for the real tokens, then zeros), "
                                "as a tokenizer gives it")
    if not left_padding:
        return emb * mask[..., None].to(emb.dtype), mask
    src = (cols[None, :] + n[:, None]) % T  # (B, T): new row i takes old row (i + n) mod T
    moved = emb.gather(1, src[..., None].expand(-1, -1, emb.shape[2]).to(emb.device))  # (B, T, C)
    new_mask = mask.flip(-1)  # (B, T): zeros first, ones last
    return moved * new_mask[..., None].to(emb.dtype), new_mask


def encode_prompts(encoder, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None,
                   left_padding: bool = True) -> TextCondition:
    """Prompts (one per image) -> the TextCondition a t2i generator takes. ``encoder``: a
    :class:`.t5.T5TextEncoder` (or anything with ``encode(prompts) -> (features, mask)``).
    ``negative_prompts``: one per prompt, or None for the model's learned null caption."""
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise InvalidInputError("encode_prompts needs at least one prompt")
    cond, mask = caption_condition(*encoder.encode(prompts), left_padding=left_padding)
    neg = neg_mask = None
    if negative_prompts is not None:
        if len(negative_prompts) != len(prompts):
            raise InvalidInputError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts")
        neg, neg_mask = caption_condition(*encoder.encode([str(p) for p in negative_prompts]),
                                          left_padding=left_padding)
    return TextCondition(cond, mask, neg, neg_mask, tuple(prompts))
