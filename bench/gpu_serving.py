"""The serving half of ``bench/gpu.sh``: the model cache under a memory cap, and request batching on the device.

eviction: VAR-d30 and LlamaGen-XL at their real sizes (seeded random weights; generator bfloat16, tokenizer
float32) share one ModelCache whose budget holds either model with its working set but not both. On CUDA the
process may use no more device memory than a cap a little above that budget
(``torch.cuda.set_per_process_memory_fraction``), so a load past it would be a real CUDA out-of-memory error, as
on a card that small. The run: d30 generates; XL loads (the cache first offloads d30 to CPU memory: it knows
XL's size before reading it, as the loader's estimate gives it) and generates; d30 comes back (XL offloaded
first) and generates; a request too large for the budget is refused with the numbers. Each step records what
is resident where, the device's peak memory and the cache's log.

batching: the bundled model's generate workflow (``workflows/generate.json``) on the device, N runs at once
through one WorkflowService (how the web app and a Ray Serve replica run workflows; no HTTP), each run its own
seed: wall time of one run alone and of 8 and 16 at once, the batch sizes the engine formed, and whether each
image equals the same seed run alone (through a second service, so nothing comes from the first one's cache).

    python bench/gpu_serving.py --out DIR            # one CUDA GPU, about a minute
    python bench/gpu_serving.py --out DIR --smoke    # the same code paths on the CPU with tiny models
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from common import env_info, sync, write_json

ROOT = Path(__file__).resolve().parent.parent
GENERATE_WORKFLOW = ROOT / "workflows" / "generate.json"
GEN_DTYPE = torch.bfloat16


# ---- two models at their real sizes ---------------------------------------------------------------
def model_specs(smoke: bool) -> dict[str, tuple[str, str, Any, str, Any]]:
    """name -> (family, tokenizer kind, tokenizer config, generator kind, generator config)."""
    from arnodes.engine.models.llamagen import PRESETS as GPT_PRESETS
    from arnodes.engine.models.llamagen import LlamaGenConfig
    from arnodes.engine.models.var import PRESETS as VAR_PRESETS
    from arnodes.engine.tokenizers.msvq import PRESETS as MSVQ_PRESETS
    from arnodes.engine.tokenizers.vq import PRESETS as VQ_PRESETS
    from arnodes.engine.tokenizers.vq import VQConfig
    if smoke:
        import var_generate as vg
        tok, gen = vg.configs("fixture")
        return {"var-tiny": ("var", "msvq", tok, "var", gen),
                "llamagen-tiny": ("llamagen", "vq", VQConfig(codebook_size=256, z_channels=32, ch=32, num_res_blocks=1),
                                  "llamagen", LlamaGenConfig(dim=64, n_layer=2, n_head=4, num_classes=10,
                                                             vocab_size=256, block_size=16))}
    return {"var-d30": ("var", "msvq", MSVQ_PRESETS["vae_ch160v4096z32"], "var", VAR_PRESETS["var-d30"]),
            "llamagen-XL": ("llamagen", "vq", VQ_PRESETS["vq_ds16_c2i"], "llamagen", GPT_PRESETS["GPT-XL"])}


def _modules(spec) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(tokenizer, generator) built on the meta device: shapes without memory."""
    from arnodes.engine.checkpoint import build_on_meta
    from arnodes.engine.kinds import kind_classes
    from arnodes.engine.loader import KINDS
    _, tok_kind, tok_cfg, gen_kind, gen_cfg = spec
    tok_cls, gen_cls = (kind_classes(KINDS, k, "arnodes.engine", "model")[0] for k in (tok_kind, gen_kind))
    return build_on_meta(lambda: tok_cls(tok_cfg)), build_on_meta(lambda: gen_cls(gen_cfg))


def planned_bytes(spec) -> int:
    """Resident bytes of the bundle once loaded: the generator in GEN_DTYPE, the tokenizer in float32."""
    from arnodes.engine.quantize import planned_bytes as module_bytes
    tok, gen = _modules(spec)
    return module_bytes(tok, "none") + module_bytes(gen, "none", GEN_DTYPE)


def random_bundle(name: str, spec, device: str):
    """A ModelBundle with seeded random weights, through the loader's own build path (cast on the host, then
    moved): what the cache's loader returns for a checkpoint file."""
    import var_generate as vg

    from arnodes.engine.classes import ClassNames
    from arnodes.engine.loader import ModelBundle, build_module
    family, tok_kind, tok_cfg, gen_kind, gen_cfg = spec
    tok_meta, gen_meta = _modules(spec)
    tok = build_module(tok_kind, tok_cfg, vg.random_state_dict(tok_meta, 1), f"{name}:tokenizer", device, consume=True)
    gen = build_module(gen_kind, gen_cfg, vg.random_state_dict(gen_meta, 2, GEN_DTYPE), f"{name}:generator", device,
                       GEN_DTYPE, consume=True)
    size = tok_cfg.image_size if family == "var" else int(round(gen_cfg.block_size ** 0.5)) * tok_cfg.downsample
    return ModelBundle(name=name, family=family, tokenizer=tok, generator=gen,
                       classes=ClassNames([str(i) for i in range(gen_cfg.num_classes)]), image_size=size)


class _Log(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def eviction(device: str, smoke: bool) -> dict:
    """Load, generate and switch between the two models under a budget that holds one (see the module doc)."""
    from arnodes.engine import tasks
    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine.errors import LimitError
    from arnodes.engine.generate import generate
    from arnodes.engine.memory import working_set
    from arnodes.engine.model_cache import ModelCache
    from arnodes.engine.sampling import SamplingParams
    specs = model_specs(smoke)
    sizes = {n: planned_bytes(s) for n, s in specs.items()}
    big, small = max(sizes.values()), min(sizes.values())
    budget = big + small // 2  # either model and its working set fit; both do not
    cap = budget + small // 4  # what the process may allocate on the device (CUDA): still less than both
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(device).total_memory, device)
        torch.cuda.reset_peak_memory_stats(device)
    loads: list[str] = []

    def loader(name, *, device, dtype, quant, models_dir):
        loads.append(name)
        return random_bundle(name, specs[name], device)
    cache = ModelCache(budget_bytes=budget, loader=loader, estimate=lambda name, dtype, quant: sizes[name])
    log = _Log()
    cache_logger = logging.getLogger("arnodes.engine.model_cache")
    cache_logger.addHandler(log)
    cache_logger.setLevel(logging.INFO)
    steps: list[dict] = []

    def step(name: str, batch: int = 1) -> None:
        t0, row = time.perf_counter(), {"model": name, "batch": batch}
        try:
            with cache.use(name, device=device, dtype="bfloat16") as bundle:
                need = working_set(bundle, batch)
                row["working_set_bytes"] = need.total
                with cache.reserve(device, need, f"generating {batch} image(s) with {name}", bundle):
                    canvas = generate(bundle, Conditioning(class_ids=(1,) * batch, cfg=4.0),
                                      params=SamplingParams(top_k=100), seed=0, compile="off")
                    image = tasks.decode(bundle, canvas)
                    sync(device)
                    row["image_finite"] = bool(torch.isfinite(image).all())
        except LimitError as e:
            row["refused"] = str(e)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        row["resident"] = [{k: d[k] for k in ("name", "resident_on", "bytes")} for d in cache.info()]
        if torch.device(device).type == "cuda":
            row["device_allocated_bytes"] = torch.cuda.memory_allocated(device)
            row["device_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        row["cache_log"] = log.lines[:]
        log.lines.clear()
        steps.append(row)
        print(json.dumps({k: row[k] for k in ("model", "batch", "seconds")} | {"refused": "refused" in row}),
              file=sys.stderr)

    first, second = sorted(specs, key=lambda n: -sizes[n])  # the larger model first
    try:
        step(first)
        step(second)
        step(first)
        per_image = steps[1]["working_set_bytes"]  # the second model's, at one image
        step(second, batch=budget // per_image + 1)  # more than the whole budget: refused before allocating
    finally:
        cache_logger.removeHandler(log)
        if torch.device(device).type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    return {"models": {n: {"planned_bytes": sizes[n]} for n in specs}, "budget_bytes": budget,
            "device_cap_bytes": cap if torch.device(device).type == "cuda" else None,
            "loads": loads, "steps": steps}


# ---- batching through the workflow service ---------------------------------------------------------
def _run(service, workflow: dict, seed: int) -> Path:
    wf = copy.deepcopy(workflow)
    wf["3"]["inputs"]["seed"] = seed
    return service.run(wf)[0]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def batching(device: str, sizes: list[int], repeats: int, workdir: Path) -> dict:
    from arnodes.engine.batching import default_batcher
    from arnodes.graph.service import WorkflowService
    workflow = json.loads(GENERATE_WORKFLOW.read_text())
    workflow["1"]["inputs"]["device"] = torch.device(device).type  # the loader node's choice: cpu | cuda
    service = WorkflowService(workdir / "batched")
    _run(service, workflow, 10**6)  # loads the model, first generation
    seed = iter(range(1, 10**6))
    alone = []
    for _ in range(max(5, repeats)):
        t0 = time.perf_counter()
        _run(service, workflow, next(seed))
        alone.append(time.perf_counter() - t0)
    one = statistics.median(alone)
    bursts, last = [], {}
    for n in sizes:
        walls, formed = [], []
        for _ in range(repeats):
            seeds = [next(seed) for _ in range(n)]
            paths: dict[int, Path] = {}
            start = threading.Barrier(n + 1)

            def go(s: int) -> None:
                start.wait()
                paths[s] = _run(service, workflow, s)
            threads = [threading.Thread(target=go, args=(s,)) for s in seeds]
            for t in threads:
                t.start()
            before = len(default_batcher().batches)
            start.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            walls.append(time.perf_counter() - t0)
            formed.append(default_batcher().batches[before:])
            last = paths
        bursts.append({"concurrent": n, "wall_s": round(statistics.median(walls), 4),
                       "all_s": [round(w, 4) for w in walls], "ratio_to_one": round(statistics.median(walls) / one, 2),
                       "batches_formed": formed})
        print(json.dumps(bursts[-1]), file=sys.stderr)
    solo = WorkflowService(workdir / "solo")  # its own executor: nothing from the batched service's cache
    # cuBLAS / cuDNN may pick other kernels for a batch than for one image: how far apart, not only whether
    diffs = [int(np.abs(_pixels(p).astype(np.int16) - _pixels(_run(solo, workflow, s))).max()) for s, p in last.items()]
    return {"model": workflow["1"]["inputs"]["model"], "dtype": workflow["1"]["inputs"]["dtype"],
            "path": "WorkflowService.run from one thread per request (no HTTP), generate.json",
            "batch_settings": dataclasses.asdict(default_batcher().settings),
            "one_request_s": round(one, 4), "one_request_all_s": [round(t, 4) for t in alone], "bursts": bursts,
            "identical_to_solo": {"checked": len(last), "identical": sum(d == 0 for d in diffs),
                                  "max_pixel_diff": max(diffs, default=0)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_serving.json")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models: check the code paths")
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", choices=["auto", "on", "off"], default="off",
                   help="the batching runs' decode step (off: every batch size runs at once, no capture per shape)")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; run with --smoke to check the code paths on the CPU")
    from arnodes.engine.generate.compiled import set_default_mode
    set_default_mode(args.compile)
    device = "cpu" if args.smoke else args.device
    if torch.device(device).type == "cuda" and torch.device(device).index is None:
        device = f"cuda:{torch.cuda.current_device()}"  # some CUDA calls want the index spelled out
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="arnodes_gpu_serving_") as tmp:
        report = {"bench": "gpu_serving", "smoke": args.smoke, "env": env_info(device), "compile": args.compile,
                  "eviction": eviction(device, args.smoke),
                  "batching": batching(device, [2, 4] if args.smoke else [8, 16], 1 if args.smoke else args.repeats,
                                       Path(tmp))}
    report["seconds"] = round(time.perf_counter() - started, 1)
    path = args.out / ("gpu_serving_smoke.json" if args.smoke else "gpu_serving.json")
    write_json(report, path, echo=False)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
