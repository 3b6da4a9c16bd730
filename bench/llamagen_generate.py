"""Benchmark LlamaGen class-to-image token generation: tokens/s and peak memory.

Each measurement runs in its own subprocess so that the CPU peak (``ru_maxrss``) belongs
to that run alone. Models: ``fixture`` (the tiny parity config and its weights) and
``gpt-b`` (the released GPT-B architecture at 256px, 256 tokens, random weights). With
``--reference-src DIR`` (a checkout of FoundationVision/LlamaGen, never committed) the
official ``generate()`` runs on the same weights with the same settings, and the
ratio ours/official of tokens/s is reported.

    python bench/llamagen_generate.py --models fixture gpt-b --batch 1 8 --out results.json
    python bench/llamagen_generate.py --reference-src /tmp/llamagen_ref --batch 1
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("bench.llamagen_generate")
REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "reference" / "llamagen" / "tiny_a"
GPT_B = {"dim": 768, "n_layer": 12, "n_head": 12, "num_classes": 1000, "vocab_size": 16384, "block_size": 256}


def _model_args(model: str) -> dict:
    if model == "fixture":
        return json.loads((FIXTURE / "config.json").read_text())["gpt_model_args"]
    if model == "gpt-b":
        return dict(GPT_B)
    raise SystemExit(f"error: unknown model {model!r}; expected 'fixture' or 'gpt-b'")


def _weights_file(model: str, tmp: Path) -> Path:
    """The fixture's weights, or seeded random GPT-B weights written once for every worker."""
    if model == "fixture":
        return FIXTURE / "gpt.safetensors"
    import torch
    from safetensors.torch import save_file

    from arnodes.engine.models.llamagen import LlamaGen, LlamaGenConfig
    path = tmp / "gpt-b.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        sd = LlamaGen(LlamaGenConfig.from_official(GPT_B)).state_dict()
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


# ---- the two implementations, built on the same state dict ---------------------------------------
def build_ours(args: dict, sd: dict, source: str, device, dtype, batch: int, cfg: float, top_k: int,
               quant: str = "none", compile: str | None = None):
    """Our ``generate_tokens`` as ``once(seed) -> tokens (B, L)``. Takes ``sd`` over (empties it: the model
    holds the only references, as the loader holds a file's), so callers that build again pass a copy."""
    import torch

    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine.generate.next_token import generate_tokens
    from arnodes.engine.layers import pack_for_cpu
    from arnodes.engine.loader import build_module
    from arnodes.engine.models.llamagen import LlamaGenConfig
    from arnodes.engine.quantize import quantize_model
    from arnodes.engine.sampling import SamplingParams
    model = quantize_model(build_module("llamagen", LlamaGenConfig.from_official(args), sd, source, device=device,
                                        dtype=dtype, consume=True), quant)
    model = pack_for_cpu(model)  # nothing else holds the float weights (as in load_generator_file)
    cond = Conditioning(tuple(i % args["num_classes"] for i in range(batch)), cfg=cfg)
    params = SamplingParams(temperature=1.0, top_k=min(top_k, args["vocab_size"]), top_p=1.0, top_p_style="llamagen")

    def once(seed: int):
        out = generate_tokens(model, cond, None, params, torch.Generator(device).manual_seed(seed), compile=compile)
        return out.grids[0].reshape(batch, -1)
    once.generator = model  # what a step reads (the GPU bench counts its bytes)
    return once


def build_official(src: str, args: dict, sd: dict, device, dtype, batch: int, cfg: float, top_k: int):
    """The official ``generate()`` from a FoundationVision/LlamaGen checkout, as ``once(seed) -> tokens``."""
    import torch
    sys.path.insert(0, src)  # only in the benchmark process, only when asked
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import ModelArgs, Transformer
    full = {"cls_token_num": 1, "model_type": "c2i", **args}
    model = Transformer(ModelArgs(**{k: v for k, v in full.items() if k in ModelArgs.__dataclass_fields__}))
    model.load_state_dict(sd, strict=False)
    model = model.to(device=device, dtype=dtype).eval()
    cond_t = torch.tensor([i % args["num_classes"] for i in range(batch)], device=device)

    def once(seed: int):
        torch.manual_seed(seed)
        return generate(model, cond_t, args["block_size"], cfg_scale=cfg, cfg_interval=-1, temperature=1.0,
                        top_k=min(top_k, args["vocab_size"]), top_p=1.0, sample_logits=True)
    return once


# ---- worker: one (implementation, model, device, batch) measurement ----------------------------
def _worker(job: dict) -> dict:
    import torch
    from safetensors.torch import load_file

    from arnodes.engine.checkpoint import read_checkpoint
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    read = read_checkpoint if job["impl"] == "arnodes" else load_file  # ours: the engine's own reader
    args, sd = job["model_args"], read(job["weights"])
    L, B = args["block_size"], job["batch"]
    common = dict(device=device, dtype=getattr(torch, job["dtype"]), batch=B, cfg=job["cfg"], top_k=job["top_k"])
    if job["impl"] == "arnodes":
        once = build_ours(args, sd, job["weights"], **common, compile=job.get("compile", "off"))
    else:
        once = build_official(job["reference_src"], args, sd, **common)
    del sd

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        t0 = time.perf_counter()
        for i in range(job["warmup"]):
            once(i)
        sync()
        warmup_s = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rss0 = _maxrss_kib()
        times = []
        for i in range(job["iters"]):
            t0 = time.perf_counter()
            tokens = once(100 + i)
            sync()
            times.append(time.perf_counter() - t0)
    rss1 = _maxrss_kib()
    best = min(times)
    out = {k: job[k] for k in ("impl", "model", "device", "batch", "cfg", "threads", "dtype")}
    if job["impl"] == "arnodes":
        out.update(compile=job.get("compile", "off"), warmup_s=warmup_s)  # warm-up: includes any compiling
    out["last_tokens"] = tokens.reshape(B, -1).tolist()  # the same seed in both implementations
    out.update(tokens=L, seconds_best=best, seconds_median=sorted(times)[len(times) // 2],
               tokens_per_s=B * L / best, peak_rss_mb=rss1 / 1024, rss_growth_in_timed_runs_mb=(rss1 - rss0) / 1024)
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _run_job(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: benchmark worker failed for {job['impl']}/{job['model']}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["fixture", "gpt-b"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    p.add_argument("--cfg", type=float, default=4.0, help="CFG scale (> 1 doubles the model batch)")
    p.add_argument("--top-k", type=int, default=2000, help="official sampler default; clipped to the vocab")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", nargs="+", type=int, default=[torch_threads_default()],
                   help="thread counts to measure (e.g. 1 2)")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"],
                   help="our model's dtypes (the official code runs float32)")
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"],
                   help="our decode step eager and/or torch.compile'd (compile time is in the warm-up, not timed)")
    p.add_argument("--reference-src", type=Path, default=None, help="FoundationVision/LlamaGen checkout")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(_worker(json.loads(a.worker))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    devices = a.devices or ["cpu"] + (["cuda"] if _cuda_available() else [])
    if a.reference_src and not (a.reference_src / "autoregressive" / "models" / "gpt.py").is_file():
        raise SystemExit(f"error: {a.reference_src} is not a LlamaGen checkout (autoregressive/models/gpt.py missing)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models:
            weights = _weights_file(model, Path(tmp))
            for device, threads, batch in ((d, t, b) for d in devices for t in a.threads for b in a.batch):
                # the official code first: any drift over a long run (clock, neighbours) then costs ours
                runs = (([("official", "float32", "off")] if a.reference_src else [])
                        + [("arnodes", dt, c) for c in a.compile for dt in a.dtypes])
                row = {}
                for impl, dtype, compile_mode in runs:
                    job = dict(impl=impl, model=model, device=device, batch=batch, cfg=a.cfg, top_k=a.top_k,
                               iters=a.iters, warmup=a.warmup, threads=threads, weights=str(weights), dtype=dtype,
                               model_args=_model_args(model), reference_src=str(a.reference_src),
                               compile=compile_mode)
                    row[(impl, dtype, compile_mode)] = r = _run_job(job)
                    results.append(r)
                    logger.info("%-8s %-8s %-7s %-4s compile %-3s %d threads B=%d: %8.1f tok/s  peak RSS %.0f MB", impl,
                                dtype, model, device, compile_mode, threads, batch, r["tokens_per_s"], r["peak_rss_mb"])
                _compare(row)
            for r in results:
                r.pop("last_tokens", None)
    report = {"benchmark": "llamagen_generate", "env": _env(), "settings": {
        "cfg": a.cfg, "top_k": a.top_k, "iters": a.iters, "warmup": a.warmup, "threads": a.threads,
        "dtypes": a.dtypes, "compile": a.compile, "official_dtype": "float32",
        "reference": "FoundationVision/LlamaGen" if a.reference_src else None}, "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


def _maxrss_kib() -> float:
    """Peak RSS in KiB of this worker alone (VmHWM; ``ru_maxrss`` would include the parent's peak)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import maxrss_bytes
    return maxrss_bytes() / 1024


def _compare(row: dict) -> None:
    """Speed against the official run, and how many tokens match: ours float32 vs official (same seed),
    ours in half precision vs ours float32 (eager, or compiled against compiled)."""
    ref = row.get(("official", "float32", "off"))
    for (impl, dtype, compile_mode), r in row.items():
        if impl != "arnodes":
            continue
        ours32 = row.get(("arnodes", "float32", compile_mode))
        if ref is not None:
            r["speedup_vs_official"] = r["tokens_per_s"] / ref["tokens_per_s"]
            if dtype == "float32":
                r["token_agreement_vs_official"] = _agreement(r["last_tokens"], ref["last_tokens"])
        if dtype != "float32" and ours32 is not None:
            r["token_agreement_vs_ours_float32"] = _agreement(r["last_tokens"], ours32["last_tokens"])


def _agreement(a: list, b: list) -> float:
    flat_a, flat_b = [t for row in a for t in row], [t for row in b for t in row]
    return sum(x == y for x, y in zip(flat_a, flat_b)) / max(1, len(flat_a))


def _env() -> dict:
    import torch

    from common import env_info  # imported here: the parent process needs no torch until it reports
    return env_info("cuda" if torch.cuda.is_available() else "cpu")


def torch_threads_default() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
