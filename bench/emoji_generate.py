"""Time one image from the bundled emoji model after load (generate + decode), batch 1; JSON out.

    python bench/emoji_generate.py --threads 1 --repeats 10
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from arnodes.engine import tasks
from arnodes.engine.conditioning import Conditioning
from arnodes.engine.loader import load_bundle
from arnodes.engine.registry import DEFAULT_MODEL, model_defaults
from arnodes.engine.sampling import SamplingParams


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--classes", default="red heart")
    p.add_argument("--out")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    bundle = load_bundle(DEFAULT_MODEL)
    load_s = time.perf_counter() - t0
    d = model_defaults(DEFAULT_MODEL)
    cond = Conditioning(tuple(bundle.classes.resolve_many(a.classes)), cfg=d.get("cfg", 1.0))
    run = tasks.RunSettings(params=SamplingParams(top_k=d.get("top_k", 0), top_p=d.get("top_p", 1.0)), seed=0)
    tasks.generate_images(bundle, cond, run)  # warm-up
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        tasks.generate_images(bundle, cond, run)
        times.append(time.perf_counter() - t)
    result = {"model": DEFAULT_MODEL, "threads": a.threads, "batch": cond.batch, "load_s": round(load_s, 3),
              "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "repeats": a.repeats,
              "torch": torch.__version__}
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
