"""Why the engine picks its CPU kernels: few-row linears and half-precision matmul throughput.

A decode step multiplies a few rows (2 with CFG at batch 1; up to 64 for VAR's coarse scales) by every
weight of the model, so it streams the weights from memory. This times, over a GPT-B-sized set of
weights (too large for the caches), torch's ``F.linear`` (``x @ W.T``) against ``W @ x.T`` (the
engine's ``layers.Linear`` few-row path), at 1 and 2 threads; and a square GEMM in float32 / bf16 /
float16, which shows whether this CPU has native half-precision matmuls.

    python bench/linear_kernels.py --out bench/results/linear_kernels.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

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
    return {"threads": threads, "rows": rows, "weight_mb": nbytes / 1e6, "linear_ms": 1e3 * linear,
            "w_at_xt_ms": 1e3 * streamed, "linear_gb_s": nbytes / linear / 1e9, "w_at_xt_gb_s": nbytes / streamed / 1e9,
            "speedup": linear / streamed}


def gemm(dtype: torch.dtype, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    a, b = torch.randn(512, 1024).to(dtype), torch.randn(1024, 3072).to(dtype)
    s = _median_s(lambda: a @ b, repeats)
    return {"dtype": str(dtype).split(".")[-1], "threads": threads, "gflop_s": 2 * 512 * 1024 * 3072 / s / 1e9}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rows", nargs="+", type=int, default=[2, 16, 64])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    rows = [few_rows(t, r, a.repeats) for t in a.threads for r in a.rows]
    gemms = [gemm(d, t, a.repeats) for t in a.threads for d in (torch.float32, torch.bfloat16, torch.float16)]
    write_json({"bench": "linear_kernels", "env": env_info("cpu"), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "few_rows": rows, "gemm": gemms}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
