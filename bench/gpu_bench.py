"""The GPU benchmark behind ``bench/gpu.sh``: ours vs the official code, and ours against the memory bound.

Models at their real sizes with seeded random weights (speed does not depend on the values):
VAR d16 and d30 (256 px) and LlamaGen GPT-B and GPT-XL (256 px, 256 tokens); batch 1 and 16; ours in
bf16 and bf16 + weight-only int8, with the compiled step (``--compile`` default ``auto`` = CUDA graphs on
CUDA); the official code in bf16 (VAR under ``torch.autocast`` as its demo does, LlamaGen cast to bf16 as
its sample script does), when its checkout is given.

Memory bound: a decode step reads every generator weight once, so one image needs at least
``weight bytes x forward passes / bandwidth`` (forward passes: LlamaGen one per token, VAR one per
scale). The bandwidth is measured on the device (a large device-to-device copy) and reported with the
device's name. ``fraction_of_bound`` = bound / measured generation time (1.0 = at the bound).

Jobs run in priority order (the targets of the fast-engine issue first) and stop cleanly at
``--budget-s``, so the whole script fits its time slot; skipped jobs are listed in the JSON.

    bench/gpu.sh OUT_DIR [--var-src DIR] [--llamagen-src DIR]
    bench/gpu.sh OUT_DIR --smoke          # the same code paths on the CPU with tiny models, < 1 minute
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from common import env_info, sync, write_json

from arnodes.engine.quantize import quantized_bytes

BENCH = Path(__file__).resolve().parent
GPT = {"B": {"dim": 768, "n_layer": 12, "n_head": 12}, "XL": {"dim": 1280, "n_layer": 36, "n_head": 20},
       "tiny": {"dim": 64, "n_layer": 2, "n_head": 4}}


@dataclass(frozen=True)
class Job:
    model: str  # var-d16 | var-d30 | llamagen-B | llamagen-XL | var-tiny | llamagen-tiny
    impl: str  # ours | official
    batch: int
    quant: str = "none"


def plan(smoke: bool) -> list[Job]:
    """Priority order: what the issue's targets need first, batch 16 last."""
    if smoke:
        return [Job(m, impl, b, q) for m in ("llamagen-tiny", "var-tiny") for b in (1, 2)
                for impl, q in (("ours", "none"), ("ours", "int8"), ("official", "none"))]
    first = [Job("llamagen-XL", "ours", 1), Job("llamagen-XL", "official", 1), Job("var-d16", "ours", 1),
             Job("var-d16", "official", 1), Job("llamagen-XL", "ours", 1, "int8"), Job("var-d16", "ours", 1, "int8"),
             Job("llamagen-B", "ours", 1), Job("llamagen-B", "official", 1), Job("var-d30", "ours", 1),
             Job("var-d30", "official", 1), Job("llamagen-B", "ours", 1, "int8"), Job("var-d30", "ours", 1, "int8")]
    return first + [Job(j.model, j.impl, 16, j.quant) for j in first]


# ---- building each side ---------------------------------------------------------------------------
def _llamagen_args(size: str) -> dict:
    return {**GPT[size], "num_classes": 1000 if size != "tiny" else 10, "vocab_size": 16384 if size != "tiny" else 256,
            "block_size": 256 if size != "tiny" else 16}


def _llamagen_sd(size: str) -> dict:
    from arnodes.engine.models.llamagen import LlamaGen, LlamaGenConfig
    torch.manual_seed(0)
    with torch.device("cpu"):
        return {k: v.contiguous() for k, v in LlamaGen(LlamaGenConfig.from_official(_llamagen_args(size))).state_dict().items()}


def build(job: Job, device: torch.device, dtype: torch.dtype, srcs: dict, cache: dict) -> tuple[Callable[[], Any], Any]:
    """(one image batch, the generator whose weights are read) for a job; state dicts shared via ``cache``."""
    family, size = job.model.split("-", 1)
    if family == "llamagen":
        import llamagen_generate as lg
        args = _llamagen_args(size)
        if job.model not in cache:
            cache[job.model] = _llamagen_sd(size)
        sd = cache[job.model]
        common = dict(device=device, dtype=dtype, batch=job.batch, cfg=4.0, top_k=2000)
        if job.impl == "official":
            once = lg.build_official(srcs["llamagen"], args, dict(sd), **common)
        else:
            once = lg.build_ours(args, dict(sd), job.model, **common, quant=job.quant)
        return (lambda: once(0)), getattr(once, "generator", None)
    import var_generate as vg
    name = "fixture" if size == "tiny" else size
    if job.model not in cache:
        cache[job.model] = vg.state_dicts(name)
    sds = cache[job.model]
    vocab = vg.configs(name)[1].vocab_size
    sampling = {**vg.SAMPLING["demo"], "top_k": min(vg.SAMPLING["demo"]["top_k"], vocab)}
    run_args = dict(device=str(device), batch=job.batch, cfg_scale=1.5, sampling=sampling, seed=0)
    if job.impl == "official":
        fn = vg.build_official(Path(srcs["var"]), name, *sds, **run_args)
        if device.type == "cuda":
            def autocast_fn():
                with torch.autocast("cuda", dtype=dtype):
                    return fn()
            return autocast_fn, None
        return fn, None
    fn = vg.build_ours(name, *(dict(sd) for sd in sds), **run_args, dtype=str(dtype).removeprefix("torch."),
                       quant=job.quant)
    return fn, fn.generator


# ---- the memory bound -----------------------------------------------------------------------------
def forward_passes(job: Job) -> int:
    family, size = job.model.split("-", 1)
    if family == "llamagen":
        return _llamagen_args(size)["block_size"]
    import var_generate as vg
    return len(vg.configs("fixture" if size == "tiny" else size)[1].patch_nums)


def measure_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes per second of a device-to-device copy (reads + writes)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    sync(device)
    return 2 * nbytes * 5 / (time.perf_counter() - t0)


# ---- running --------------------------------------------------------------------------------------
def time_job(fn: Callable[[], Any], device: torch.device, repeats: int) -> dict:
    with torch.no_grad():
        t0 = time.perf_counter()
        fn()  # warm-up: compiles / captures the step
        sync(device)
        warm = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    return {"warmup_s": warm, "seconds": sorted(times)[len(times) // 2], "all_s": times}


def run(args: argparse.Namespace, save: Callable[[dict], None] = lambda report: None) -> dict:
    """Every job in priority order; ``save(report so far)`` after each, so a run cut off by its time slot
    still leaves the rows it finished."""
    device = torch.device("cpu" if args.smoke else args.device)
    dtype = torch.bfloat16
    srcs = {"var": args.var_src, "llamagen": args.llamagen_src}
    bandwidth = measure_bandwidth(device, (64 if args.smoke else 2048) << 20)
    started, rows, skipped, cache = time.perf_counter(), [], [], {}
    for job in plan(args.smoke):
        family = job.model.split("-")[0]
        if job.impl == "official" and not srcs[family]:
            skipped.append({**asdict(job), "why": f"no --{family}-src checkout given"})
            continue
        if time.perf_counter() - started > args.budget_s:
            skipped.append({**asdict(job), "why": f"time budget {args.budget_s} s spent"})
            continue
        fn, generator = build(job, device, dtype, srcs, cache)
        # weights only: counted before the first run allocates KV caches (at batch 16 they outweigh the weights)
        wbytes = int(quantized_bytes(generator)["total"]) if generator is not None else None
        row = {**asdict(job), "dtype": "bfloat16", **time_job(fn, device, args.repeats)}
        if wbytes is not None:
            bound = wbytes * forward_passes(job) / bandwidth
            row.update(weight_bytes=wbytes, forward_passes=forward_passes(job), bound_s=bound,
                       fraction_of_bound=bound / row["seconds"])
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("model", "impl", "batch", "quant", "seconds")}), file=sys.stderr)
        del fn, generator
        gc.collect()  # a compiled step refers back to its model: only a collection frees the weights and caches
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save(_report(args, device, bandwidth, rows, skipped, started, complete=False))
    return _report(args, device, bandwidth, rows, skipped, started, complete=True)


def _report(args: argparse.Namespace, device: torch.device, bandwidth: float, rows: list[dict], skipped: list[dict],
            started: float, complete: bool) -> dict:
    """The JSON of the rows so far, with the ratios between rows of this run (``complete``: every job was
    run or listed as skipped; false in the file a cut-off run leaves)."""
    for row in rows:  # ratios within this run
        ref = next((r for r in rows if r["impl"] == "official" and r["model"] == row["model"]
                    and r["batch"] == row["batch"]), None)
        if row["impl"] == "ours" and ref is not None:
            row["speedup_vs_official"] = ref["seconds"] / row["seconds"]
        base = next((r for r in rows if r["impl"] == "ours" and r["quant"] == "none" and r["model"] == row["model"]
                     and r["batch"] == row["batch"]), None)
        if row["impl"] == "ours" and row["quant"] != "none" and base is not None:
            row["speedup_vs_bf16"] = base["seconds"] / row["seconds"]
    return {"bench": "gpu", "smoke": args.smoke, "env": env_info(device), "bandwidth_bytes_per_s": bandwidth,
            "compile": args.compile, "rows": rows, "skipped": skipped, "complete": complete,
            "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu.json")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models: check the code paths")
    p.add_argument("--device", default="cuda")
    p.add_argument("--var-src", default=None, help="a FoundationVision/VAR checkout (never committed)")
    p.add_argument("--llamagen-src", default=None, help="a FoundationVision/LlamaGen checkout (never committed)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=390.0, help="start no new job after this many seconds")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; run with --smoke to check the code paths on the CPU")
    from arnodes.engine.generate.compiled import set_default_mode
    set_default_mode(args.compile)
    if args.smoke:
        args.repeats = 1
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("gpu_smoke.json" if args.smoke else "gpu.json")

    def save(report: dict) -> None:
        write_json(report, path, echo=False)
    save(run(args, save))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
