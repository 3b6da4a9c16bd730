"""Does the control adapter put the subject where the map says? Foreground IoU on the bundled model; JSON out.

    python bench/emoji_control.py --threads 2 --out bench/results/emoji_control.json

Sources are canonical drawings of a dozen generator classes (``training/data.py``), each shrunk
and pasted off-centre on white at seeded random places; the control map is the Canny map of that
placement (the adapter's own preprocessor). For each placement and seed the same class is drawn
twice with the same seed: with the map (strength 1) and without it. The score is the IoU of the
drawn subject's foreground with the placed subject's (``training/control_eval.py``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from arnodes.engine import tasks
from arnodes.engine.canny import canny
from arnodes.engine.conditioning import Conditioning
from arnodes.engine.control import ControlCondition
from arnodes.engine.loader import load_bundle
from arnodes.engine.registry import DEFAULT_MODEL, model_defaults
from arnodes.engine.sampling import SamplingParams
from arnodes.training import data as emoji_data
from arnodes.training.control_eval import foreground, iou, off_centre_placements
from common import env_info, write_json

CLASSES = ["red heart", "grinning face", "cat face", "red apple", "pizza", "fire", "rocket", "star",
           "rainbow", "dog face", "smiling face with sunglasses", "sun"]
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--placements", type=int, default=5, help="per class")
    p.add_argument("--seeds", type=int, default=3, help="per placement")
    p.add_argument("--adapter", default="canny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    bundle = load_bundle(DEFAULT_MODEL)
    adapter = bundle.control(a.adapter)
    d = emoji_data.load_dataset(log=lambda s: print(s, file=sys.stderr))
    by_name = {c["name"]: i for i, c in enumerate(d.classes)}
    rng = np.random.default_rng(a.seed)
    defaults = model_defaults(DEFAULT_MODEL)
    params = SamplingParams(top_k=defaults.get("top_k", 0), top_p=defaults.get("top_p", 1.0))
    pre = adapter.preprocessor
    rows = []
    for name in CLASSES:
        cid = bundle.classes.resolve(name)
        idx = np.nonzero((d.labels == by_name[name]) & (d.kind == emoji_data.KIND_CANONICAL)
                         & (d.style == d.styles.index("noto")))[0][0]
        placed = off_centre_placements(d.images[idx], d.boxes[idx], a.placements, rng)
        src = torch.from_numpy(np.stack(placed)).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # (P, 3, 64, 64)
        maps = canny(src.add(1).div(2), pre.low_threshold, pre.high_threshold).mul(2).sub(1).expand(-1, 3, -1, -1)
        region = foreground(src)
        for s in range(a.seeds):
            cond = Conditioning((cid,) * len(placed), cfg=defaults.get("cfg", 3.0))
            run = tasks.RunSettings(params=params, seed=a.seed * 1000 + s)
            ctl = tasks.generate_images(bundle, Conditioning(cond.class_ids, cfg=cond.cfg,
                                                             control=ControlCondition(adapter, maps, 1.0)), run)
            free = tasks.generate_images(bundle, cond, run)
            for k, (c, f) in enumerate(zip(iou(foreground(ctl), region), iou(foreground(free), region))):
                rows.append({"class": name, "placement": k, "seed": s, "controlled_iou": round(c, 4),
                             "uncontrolled_iou": round(f, 4)})
    ctl_mean = statistics.mean(r["controlled_iou"] for r in rows)
    free_mean = statistics.mean(r["uncontrolled_iou"] for r in rows)
    per_class = {n: round(statistics.mean(r["controlled_iou"] for r in rows if r["class"] == n), 3) for n in CLASSES}
    result = {"model": DEFAULT_MODEL, "adapter": a.adapter, "classes": len(CLASSES), "samples": len(rows),
              "controlled_iou": round(ctl_mean, 3), "uncontrolled_iou": round(free_mean, 3),
              "iou_gain": round(ctl_mean - free_mean, 3),
              "targets": {"controlled_iou": 0.55, "iou_gain": 0.3},
              "per_class_controlled_iou": per_class, "rows": rows, "sampling": {**defaults, "strength": 1.0},
              "seconds": round(time.perf_counter() - t0, 1), "env": env_info("cpu")}
    write_json(result, a.out)


if __name__ == "__main__":
    main()
