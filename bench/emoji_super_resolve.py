"""Super-resolution on the bundled emoji model against bicubic, by PSNR to the 64px ground truth; JSON out.

    python bench/emoji_super_resolve.py --threads 1 --images 200

Ground truths are the canonical renderings of the generator's classes (``training/data.py``,
built from the emoji font on first use). Each is shrunk to 16 or 32 px (antialiased bicubic),
then brought back to 64 px twice: plain bicubic, and ``engine.tasks.super_resolve`` conditioned
on the image's class with the model's default sampling (seed 0) and with greedy sampling.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from arnodes.engine import tasks
from arnodes.engine.conditioning import Conditioning
from arnodes.engine.image import resize
from arnodes.engine.loader import load_bundle
from arnodes.engine.registry import DEFAULT_MODEL, model_defaults
from arnodes.engine.sampling import SamplingParams
from arnodes.training import data as emoji_data


def psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per-image PSNR (dB) of [-1, 1] images, on 0-255 pixels rounded like a saved PNG."""
    def q(x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1, 1).add(1).mul(127.5).round()
    mse = (q(a) - q(b)).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(255.0 ** 2 / mse)).tolist()


def ground_truth(bundle, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Canonical 64px renderings of ``n`` random generator classes, and their class ids in the bundle."""
    d = emoji_data.load_dataset(log=lambda s: print(s, file=sys.stderr))
    names = bundle.classes.names
    by_name = {c["name"]: i for i, c in enumerate(d.classes)}
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(names), size=min(n, len(names)), replace=False)
    images, ids = [], []
    for cid in picks:
        rows = np.nonzero((d.labels == by_name[names[cid]]) & (d.kind == emoji_data.KIND_CANONICAL))[0]
        images.append(d.images[rows[0]])
        ids.append(int(cid))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    return x, ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    bundle = load_bundle(DEFAULT_MODEL)
    gt, ids = ground_truth(bundle, a.images, a.seed)
    d = model_defaults(DEFAULT_MODEL)
    samplers = {"default": SamplingParams(top_k=d.get("top_k", 0), top_p=d.get("top_p", 1.0)),
                "greedy": SamplingParams(top_k=1)}
    rows = []
    for low in (16, 32):
        small = resize(gt, low, low)
        scale = 64 // low
        bicubic = resize(small, 64, 64)
        row = {"input_px": low, "scale": scale, "bicubic_psnr": statistics.mean(psnr(bicubic, gt))}
        for name, params in samplers.items():
            vals = []
            for i in range(0, len(ids), a.batch):
                cond = Conditioning(tuple(ids[i:i + a.batch]), cfg=d.get("cfg", 1.0))
                out = tasks.super_resolve(bundle, cond, small[i:i + a.batch], scale,
                                          tasks.RunSettings(params=params, seed=a.seed))
                vals += psnr(out, gt[i:i + a.batch])
            base = psnr(bicubic, gt)
            row[f"{name}_psnr"] = statistics.mean(vals)
            row[f"{name}_beats_bicubic"] = sum(v > b for v, b in zip(vals, base)) / len(vals)
        rows.append({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    result = {"model": DEFAULT_MODEL, "images": len(ids), "threads": a.threads, "rows": rows,
              "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__}
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
