"""Why the engine picks its CPU kernels: few-row linears and half-precision matmul throughput.

A decode step multiplies a few rows (2 with CFG at batch 1; up to 64 for VAR's coarse scales) by every
weight of the model, so it streams the weights from memory. This times, over a GPT-B-sized set of
weights (too large for the caches), torch's ``F.linear`` (``x @ W.T``) against ``W @ x.T`` (the
engine's ``layers.Linear`` few-row path) and oneDNN's kernel on weights packed once (``layers.pack_for_cpu``),
at 1 and 2 threads; and a square GEMM in float32 / bf16 / float16 (float32 and bf16 also packed), which shows
whether this CPU has native half-precision matmuls. ``engine_packs`` records the dtypes the engine packs here.

    python bench/linear_kernels.py --out bench/results/linear_kernels.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from arnodes.engine.layers import PACKED_MIN_ROWS, pack_weight, packed_matmul
from common import env_info, write_json

GPT_B_SHAPES = [(2304, 768), (768, 768), (2048, 768), (2048, 768), (768, 2048)] * 12 + [(16384, 768)]


def _median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def few_rows(threads: int, rows: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=gen) for n, k in GPT_B_SHAPES]
    xs = {k: torch.randn(rows, k, generator=gen) for k in {k for _, k in GPT_B_SHAPES}}
    nbytes = sum(w.numel() * 4 for w in weights)
    linear = _median_s(lambda: [F.linear(xs[w.shape[1]], w) for w in weights], repeats)
    streamed = _median_s(lambda: [torch.mm(w, xs[w.shape[1]].t()) for w in weights], repeats)
    row = {"threads": threads, "rows": rows, "weight_mb": nbytes / 1e6, "linear_ms": 1e3 * linear,
           "w_at_xt_ms": 1e3 * streamed, "linear_gb_s": nbytes / linear / 1e9, "w_at_xt_gb_s": nbytes / streamed / 1e9,
           "speedup": linear / streamed}
    if packing_available():
        packed = [pack(w) for w in weights]
        del weights
        t = _median_s(lambda: [packed_mm(xs[k], w) for k, w in packed], repeats)
        row.update(packed_ms=1e3 * t, packed_gb_s=nbytes / t / 1e9)
        if rows < PACKED_MIN_ROWS:  # what the padding gains: the same kernel on exactly these rows
            t = _median_s(lambda: [packed_mm(xs[k], w, pad=False) for k, w in packed], repeats)
            row.update(packed_unpadded_ms=1e3 * t, packed_unpadded_gb_s=nbytes / t / 1e9)
    return row


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pack(w: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(in features, the weight in oneDNN's blocked layout), as ``layers.Linear.pack_for_cpu`` packs it."""
    return w.shape[1], pack_weight(w)


def packed_mm(x: torch.Tensor, packed: torch.Tensor, pad: bool = True) -> torch.Tensor:
    """The engine's packed kernel (``pad``: fewer than ``PACKED_MIN_ROWS`` rows padded, as the engine runs
    them), or oneDNN's kernel on exactly the rows given."""
    if pad:
        return packed_matmul(x, packed, None)
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def gemm(dtype: torch.dtype, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    a, b = torch.randn(512, 1024).to(dtype), torch.randn(1024, 3072).to(dtype)
    flop = 2 * 512 * 1024 * 3072
    row = {"dtype": str(dtype).split(".")[-1], "threads": threads, "gflop_s": flop / _median_s(lambda: a @ b, repeats) / 1e9}
    if dtype in (torch.float32, torch.bfloat16) and packing_available():
        _, w = pack(b.t().contiguous())
        row["packed_gflop_s"] = flop / _median_s(lambda: packed_mm(a, w), repeats) / 1e9
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rows", nargs="+", type=int, default=[2, 16, 64])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    rows = [few_rows(t, r, a.repeats) for t in a.threads for r in a.rows]
    gemms = [gemm(d, t, a.repeats) for t in a.threads for d in (torch.float32, torch.bfloat16, torch.float16)]
    from arnodes.engine.layers import Linear
    write_json({"bench": "linear_kernels", "env": env_info("cpu"), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "engine_packs": sorted(str(d).split(".")[-1] for d in Linear.packed_dtypes),
                "few_rows": rows, "gemm": gemms}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
