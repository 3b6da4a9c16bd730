"""engine/layers.Linear: the few-row kernel choice changes speed, never the result beyond float rounding,
and it is fixed per CPU (a replayed workflow computes the same numbers)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arnodes.engine.layers import Linear, _streamed_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 16, 40, 41, 50, 64, 65])
def test_every_row_count_matches_torch_linear(dtype, rows):
    torch.manual_seed(0)
    lin = Linear(1024, 512).to(dtype)  # 2 MB of float32: above min_weight, so the streamed path is live
    x = torch.randn(rows, 1024).to(dtype)
    out, ref = lin(x), F.linear(x, lin.weight, lin.bias)
    assert out.shape == ref.shape and out.dtype == dtype and out.is_contiguous()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    lo, hi = Linear.streamed_rows.get(dtype, (1, 0))
    if not lo <= rows <= hi:  # torch's own kernel: the very same numbers
        assert torch.equal(out, ref)


def test_the_choice_follows_the_cpu_capability(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    avx512 = _streamed_rows()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    avx2 = _streamed_rows()
    assert avx512[torch.float32][0] == 4  # torch's kernel streams 1-3 rows at the bandwidth there
    assert avx2[torch.float32][0] == 1 and torch.bfloat16 not in avx2


def test_small_weights_and_leading_dims_take_torch_linear():
    torch.manual_seed(0)
    small = Linear(64, 64)
    x = torch.randn(2, 3, 64)
    assert torch.equal(small(x), F.linear(x, small.weight, small.bias))
    big = Linear(1024, 512, bias=False)
    x = torch.randn(2, 5, 1024)
    torch.testing.assert_close(big(x), F.linear(x, big.weight), atol=1e-4, rtol=1e-4)
