"""Does the generator use its style input? Teacher-forced loss per scale with the right style, "any" and a wrong one.

A next-scale generator can learn every drawing and still ignore its style input: teacher-forced, each
scale from the third on can read the style off the coarser tokens, so only the first scales must come
from the class and style. This measures, on a fixed sample of the generator's training drawings, the
cross-entropy of each scale's tokens under the three style inputs, next to the data's floor for the
first scales (the conditional entropy of their tokens given class and style, or class alone).

    python -m arnodes.training.scale_loss --weights weights --label "after run 5" \
        --json bench/results/emoji_style_loss.json

Each call adds (or replaces) the entry of its ``--label`` in the JSON, so bundles can be compared.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import data as emoji_data
from .common import cpu_env
from .export import read_bundle
from .generator_stage import tokenize
from .restyle import generator_images


def conditional_entropy(tokens: torch.Tensor, keys: list) -> float:
    """H(token rows | key) in nats, from counts: ``tokens`` (N, k) int, one key per row."""
    groups: dict[Any, Counter] = defaultdict(Counter)
    for key, row in zip(keys, tokens.tolist()):
        groups[key][tuple(row)] += 1
    total = 0.0
    for counts in groups.values():
        n = np.array(list(counts.values()), dtype=np.float64)
        total += -(n * np.log(n / n.sum())).sum()
    return float(total / len(keys))


@torch.no_grad()
def measure(weights: Path, data_cache: Path, images: int = 512, seed: int = 0) -> dict[str, Any]:
    """Per-scale mean cross-entropy under the right, "any" and a wrong style, and the data's floor."""
    bundle, manifest, classes = read_bundle(weights)
    var = bundle.generator.float().eval()
    if var.cfg.num_styles == 0:
        raise SystemExit(f"{weights}: this generator has no style input")
    d = emoji_data.load_for_manifest(data_cache, manifest)
    idx, labels = generator_images(d, classes)
    var_input, targets = tokenize(bundle.tokenizer.float(), d.images[idx], torch.device("cpu"))
    styles = d.style[idx].astype(np.int64)
    ends = var.scale_ends()
    floor = {}
    for k, end in enumerate(ends[:2]):
        floor[f"first_{k + 1}_scales"] = {
            "class_and_style": conditional_entropy(targets[:, :end], list(zip(labels.tolist(), styles.tolist()))),
            "class": conditional_entropy(targets[:, :end], labels.tolist())}
    pick = np.random.default_rng(seed).choice(len(idx), size=min(images, len(idx)), replace=False)
    lab, sty = torch.from_numpy(labels[pick]), torch.from_numpy(styles[pick])
    n = var.cfg.num_styles
    inputs = {"right": sty, "any": torch.full_like(sty, n), "wrong": (sty + 1) % n}
    per_scale: dict[str, dict[str, float]] = {}
    for name, s in inputs.items():
        logits = var(lab, var_input[pick], s)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[pick].reshape(-1),
                             reduction="none").view(len(pick), -1)
        starts = [0] + ends[:-1]
        per_scale[name] = {f"{pn}x{pn}": float(ce[:, a:b].mean())
                           for pn, a, b in zip(var.cfg.patch_nums, starts, ends)}
    return {"images": int(len(pick)), "training_drawings": int(len(idx)), "cross_entropy": per_scale,
            "floor_first_scales": floor}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="weights")
    p.add_argument("--data-cache", default=str(emoji_data.DEFAULT_CACHE))
    p.add_argument("--label", required=True, help="name of this bundle's entry, e.g. 'after run 5'")
    p.add_argument("--json", required=True, help="write / update the results here")
    p.add_argument("--images", type=int, default=512)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    out = Path(a.json)
    doc = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {"bundles": {}}
    doc["bundles"][a.label] = measure(Path(a.weights), Path(a.data_cache), a.images)
    doc["env"] = cpu_env()
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(doc["bundles"][a.label]["cross_entropy"], indent=1))


if __name__ == "__main__":
    main()
