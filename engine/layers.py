"""Transformer layers shared by the generator families."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * weight``, computed in float32 (LlamaGen's form)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def _streamed_rows() -> dict[torch.dtype, tuple[int, int]]:
    """Row counts (per dtype) for which ``W @ x.T`` beats torch's CPU ``linear``, by the CPU's vector
    width. AVX-512: torch's float32 kernel already reads W once for 1-3 rows (~2x ``W @ x.T`` at 2 rows),
    ``W @ x.T`` wins from 4 to ~40 rows in float32 and up to ~50 in bfloat16 (10-30 %). AVX2: ``W @ x.T``
    was the faster float32 kernel from one row up to 64; bfloat16 there has no native matmul to tune
    for. bench/results/linear_kernels.json records the measuring CPU's figures."""
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return {torch.float32: (4, 40), torch.bfloat16: (1, 50)}  # inclusive
    return {torch.float32: (1, 64)}


class Linear(nn.Linear):
    """``nn.Linear`` with a faster kernel choice for a few rows on the CPU (same weights, same keys).

    A decode step (one token per image, doubled by CFG) or one of VAR's coarse scales multiplies
    2-64 rows by a large weight: the step only streams the weight from memory. Torch's CPU
    ``linear`` runs many of those shapes as ``x @ W.T`` well below the memory bandwidth, and can
    get slower, not faster, with a second thread (measured: bench/README.md, "few-row linears").
    ``W @ x.T`` reads each weight row in the layout it is stored. Which kernel wins depends on the
    CPU's vector width and the dtype (``_streamed_rows``); the choice is fixed per machine, so a
    replayed workflow computes the same numbers. Results equal ``F.linear`` up to float rounding.
    """

    min_weight = 1 << 18  # elements (1 MB of float32): smaller weights stay in cache, where torch's kernel is as fast
    streamed_rows = _streamed_rows()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        lo, hi = self.streamed_rows.get(x.dtype, (1, 0))
        if not (x.device.type == "cpu" and x.dtype == self.weight.dtype and lo <= rows <= hi
                and self.weight.numel() >= self.min_weight):
            return F.linear(x, self.weight, self.bias)
        x_MK = x.reshape(rows, x.shape[-1])
        if self.bias is None:
            out_NM = torch.mm(self.weight, x_MK.t())
        else:
            out_NM = torch.addmm(self.bias.unsqueeze(1), self.weight, x_MK.t())
        return out_NM.t().contiguous().view(*x.shape[:-1], self.out_features)
