"""Teach an exported emoji generator extra classes: the ones the docs and example workflows name.

The main run trains a group-stratified subset of classes; the README, the workflows and the web
UI's examples ask for a few specific emoji ("red heart", "cat face", ...). This step appends the
missing ones to the class table (the null class stays last), initialises their embeddings at
the mean of the learned ones, and fine-tunes the whole generator on the union, oversampling the
new classes so they are learned in minutes. The tokenizer is unchanged.

    python -m arnodes.training.extend_classes --weights weights --steps 500
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from ..engine.models.var import VAR
from . import data as emoji_data
from .common import bf16_autocast_pays, seed_everything
from .export import export_weights, open_stage
from .generator_stage import tokenize, train_generator

REQUIRED_CLASSES = ("red heart", "grinning face", "cat face", "dog face", "red apple", "pizza", "fire", "sun",
                    "rocket", "star", "smiling face with sunglasses", "rainbow")


def extend_class_table(var: VAR, extra: int) -> VAR:
    """A copy of ``var`` with ``extra`` more classes; rows [0, n) kept, new rows = mean, null last."""
    n = var.cfg.num_classes
    new = VAR(dataclasses.replace(var.cfg, num_classes=n + extra))
    sd = {k: v.float() for k, v in var.state_dict().items()}
    old = sd["class_emb.weight"]  # (n + 1, C), row n = null
    mean = old[:n].mean(0, keepdim=True)
    sd["class_emb.weight"] = torch.cat([old[:n], mean.expand(extra, -1) + 0.01 * torch.randn(extra, old.shape[1]),
                                        old[n:]], dim=0)
    new.load_state_dict(sd, strict=True)
    return new


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="weights", help="folder with the exported bundle (updated in place)")
    p.add_argument("--data-cache", default=str(emoji_data.DEFAULT_CACHE))
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--oversample", type=int, default=8, help="copies of each new class's images")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    st = open_stage(a.weights, a.data_cache, a.threads)
    log, weights, bundle, manifest, classes, d = st.log, st.weights, st.bundle, st.manifest, st.classes, st.data
    by_name = {c["name"]: i for i, c in enumerate(d.classes)}
    have = {c["name"] for c in classes}
    missing = [n for n in REQUIRED_CLASSES if n not in have]
    unknown = [n for n in missing if n not in by_name]
    if unknown:
        raise SystemExit(f"not in the emoji data set: {unknown}")
    if not missing:
        log("all required classes are already present")
        return
    log(f"adding {len(missing)} classes: {missing}")
    all_classes = classes + [d.classes[by_name[n]] for n in missing]
    class_ids = [by_name[c["name"]] for c in all_classes]
    remap = np.full(len(d.classes), -1, np.int64)
    remap[class_ids] = np.arange(len(class_ids))
    idx = d.generator_train()
    idx = idx[remap[d.labels[idx]] >= 0]
    labels = remap[d.labels[idx]]
    new_rows = labels >= len(classes)
    idx = np.concatenate([idx] + [idx[new_rows]] * (a.oversample - 1))
    labels = np.concatenate([labels] + [labels[new_rows]] * (a.oversample - 1))
    gen = seed_everything(a.seed)
    var = extend_class_table(bundle.generator.float(), len(missing))
    t0 = time.time()
    var_input, targets = tokenize(bundle.tokenizer, d.images[idx], torch.device("cpu"))
    state: dict = {}
    train_generator(var, var_input, targets, torch.from_numpy(labels), state, steps=a.steps, batch=a.batch,
                    lr=a.lr, gen=gen, device=torch.device("cpu"), amp=bf16_autocast_pays(torch.device("cpu")),
                    cond_drop=0.1, save=lambda: None,
                    ckpt_every=10 ** 9, threads=a.threads)
    meta = dict(manifest.get("training", {}))
    meta["extend_classes"] = {"added": missing, "steps": a.steps, "seconds": round(time.time() - t0),
                              "lr": a.lr, "oversample": a.oversample, "seed": a.seed}
    export_weights(weights, bundle.tokenizer.float(), var.cpu().eval(), all_classes,
                   defaults=manifest.get("defaults"), meta=meta)
    log(f"exported {len(all_classes)} classes to {weights}")


if __name__ == "__main__":
    main()
