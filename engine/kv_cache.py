"""Static, preallocated KV cache shared by both generator families.

One buffer per attention layer, sized once per request and written in place: no
per-step allocation or concatenation, so a decode step can be captured in a CUDA
graph. The models write through these two methods only.
"""
from __future__ import annotations

import torch
from torch import nn


def decode_cache_dtype(model_dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype a token-by-token model keeps keys and values in: its own, except half precision on the
    CPU, where a decode step's attention computes in float32 (``layers.attention``). Stored in float32,
    each key is converted once when written instead of the whole prefix at every step; the cost is the
    cache's bytes doubled (19 MB for GPT-B at batch 1)."""
    if torch.device(device).type == "cpu" and model_dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return model_dtype


def raster_cache_length(tokens: int) -> int:
    """Positions a token-by-token model's cache holds for ``tokens``: padded to a multiple of 8, so every
    step attends one fixed, aligned length (the memory estimate counts the same padding)."""
    return -(-tokens // 8) * 8


class KVCache(nn.Module):
    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch, heads, max_len, head_dim)  # (B, nh, T, hs)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def batch(self) -> int:
        return self.k_cache.shape[0]

    @property
    def max_len(self) -> int:
        return self.k_cache.shape[2]

    def holds(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether this cache can serve a request (a smaller batch fits; a new dtype or device does not)."""
        return (self.batch >= batch and self.max_len >= max_len and self.k_cache.dtype == dtype
                and self.k_cache.device == device)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, S, hs) at positions ``input_pos`` (S,) of the first B rows, in place
        (positions stay on the device: no host sync); return those rows' whole buffers (B, nh, T, hs)."""
        B = k.shape[0]
        k_all, v_all = self.k_cache[:B], self.v_cache[:B]
        k_all.index_copy_(2, input_pos, k.to(k_all.dtype))
        v_all.index_copy_(2, input_pos, v.to(v_all.dtype))
        return k_all, v_all

    def write_span(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, S, hs) at the contiguous positions [start, start+S) and return the first B
        rows up to start+S: a plain slice copy, for a whole block of tokens (a VAR scale) known on the host."""
        B, S = k.shape[0], k.shape[2]
        self.k_cache[:B, :, start:start + S].copy_(k)
        self.v_cache[:B, :, start:start + S].copy_(v)
        return self.k_cache[:B, :, :start + S], self.v_cache[:B, :, :start + S]
