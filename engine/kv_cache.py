"""Static, preallocated KV cache shared by both generator families.

One buffer per attention layer, written in place at ``input_pos``: no per-step
allocation or concatenation, so a decode step can be captured in a CUDA graph.
"""
from __future__ import annotations

import torch
from torch import nn


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

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T, hs) at positions ``input_pos`` (T,) of the first B rows; return the
        full buffers (a cache may serve smaller batches than it was sized for)."""
        B = k.shape[0]
        self.k_cache[:B, :, input_pos] = k.to(self.k_cache.dtype)
        self.v_cache[:B, :, input_pos] = v.to(self.v_cache.dtype)
        return self.k_cache, self.v_cache

    def write_span(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T, hs) at the contiguous positions [start, start+T): a plain slice copy,
        cheaper than index-based writes when a whole block (a VAR scale) arrives at once."""
        B, T = k.shape[0], k.shape[2]
        self.k_cache[:B, :, start:start + T].copy_(k)
        self.v_cache[:B, :, start:start + T].copy_(v)
        return self.k_cache, self.v_cache

    def fits(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> bool:
        return (self.batch == batch and self.max_len >= max_len and self.k_cache.dtype == dtype
                and self.k_cache.device == device)
