"""Teach an exported emoji generator the v2 data: every class in several drawing styles, with a style input.

The v1 generator saw one Noto drawing per class, so every seed drew the same picture. This step
gives the generator a style embedding (``VARConfig.num_styles``; its extra "any" row is the
classifier-free style, initialised at zero so the model starts as it was), then fine-tunes the
whole generator on all shipped styles of its classes (``data.py`` v2: canonical and skin-tone drawings).
Style labels are dropped to "any" half of the time, so without a style the seed picks one.
Class names and ids are unchanged. The tokenizer is unchanged (run ``finetune_decoder`` on the
v2 data before or after: it does not change tokens).

Teacher-forced, every scale after the second can read the style off the coarser tokens, so with a
plain token-mean loss the generator learnt the drawings but not which one a style asks for: the
1x1 and 2x2 tokens (5 of 130) are the only ones the class and style alone decide. ``--scale-balance``
weighs each scale's loss equally and ``--coarse-batch`` adds a large cheap batch of those first
scales, which is what made the style input count (MODEL_CARD.md).

    python -m arnodes.training.restyle --weights weights --steps 4000 --minutes 30
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
from .generator_stage import CoarseBatch, scale_balanced_weights, tokenize, train_generator


def add_style_table(var: VAR, num_styles: int) -> VAR:
    """A float32 copy of ``var`` with a style embedding of ``num_styles`` + 1 ("any") rows: zero-initialised,
    or kept when ``var`` already has that many styles (so a second run continues the first)."""
    new = VAR(dataclasses.replace(var.cfg, num_styles=num_styles))
    sd = {k: v.float() for k, v in var.state_dict().items()}
    if var.cfg.num_styles != num_styles:
        sd.pop("style_emb.weight", None)
        sd["style_emb.weight"] = torch.zeros(num_styles + 1, var.cfg.embed_dim)
    new.load_state_dict(sd, strict=True)
    return new


def generator_images(d: emoji_data.EmojiData, classes: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(image indices, bundle class ids) of the data set's generator images of the bundle's classes."""
    by_emoji = {c["emoji"]: i for i, c in enumerate(classes)}
    remap = np.array([by_emoji.get(c["emoji"], -1) for c in d.classes], np.int64)
    missing = sorted(set(by_emoji) - {c["emoji"] for c in d.classes})
    if missing:
        raise SystemExit(f"bundle classes not in the data set: {missing}")
    idx = d.generator_train()
    idx = idx[remap[d.labels[idx]] >= 0]
    return idx, remap[d.labels[idx]]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="weights", help="folder with the exported bundle (updated in place)")
    p.add_argument("--data-cache", default=str(emoji_data.DEFAULT_CACHE))
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--minutes", type=float, default=0.0, help="wall-time budget (0: none)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--style-drop", type=float, default=0.5)
    p.add_argument("--scale-balance", type=float, default=0.0,
                   help="0: every token weighs the same in the loss; 1: every scale does (see scale_balanced_weights)")
    p.add_argument("--coarse-batch", type=int, default=0,
                   help="an extra batch of this many images on the first --coarse-scales scales per step (0: none)")
    p.add_argument("--coarse-scales", type=int, default=2)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    st = open_stage(a.weights, a.data_cache, a.threads)
    log, weights, bundle, manifest, classes, d = st.log, st.weights, st.bundle, st.manifest, st.classes, st.data
    idx, labels = generator_images(d, classes)
    keywords = {c["emoji"]: c.get("keywords", []) for c in d.classes}  # for captions / text prompts
    classes = [{**c, "keywords": keywords[c["emoji"]]} for c in classes]
    per_style = {s: int((d.style[idx] == i).sum()) for i, s in enumerate(d.styles)}
    log(f"{len(idx)} generator images of {len(classes)} classes: {per_style}")
    gen = seed_everything(a.seed)
    weights_by_token = scale_balanced_weights(bundle.generator.cfg.patch_nums, a.scale_balance) if a.scale_balance \
        else None
    var = add_style_table(bundle.generator.float(), len(d.styles))
    t0 = time.time()
    var_input, targets = tokenize(bundle.tokenizer, d.images[idx], torch.device("cpu"))
    tokenize_s = time.time() - t0
    state: dict = {}
    train_generator(var, var_input, targets, torch.from_numpy(labels), state, steps=a.steps, batch=a.batch,
                    lr=a.lr, gen=gen, device=torch.device("cpu"), amp=bf16_autocast_pays(torch.device("cpu")),
                    cond_drop=0.1, save=lambda: None,
                    ckpt_every=10 ** 9, budget_s=60 * a.minutes, threads=a.threads,
                    styles=torch.from_numpy(d.style[idx].astype(np.int64)), style_drop=a.style_drop,
                    token_weights=weights_by_token,
                    coarse=CoarseBatch(a.coarse_batch, a.coarse_scales) if a.coarse_batch else None)
    meta = dict(manifest.get("training", {}))
    run = {"styles": d.styles, "images": int(len(idx)), "images_per_style": per_style,
           "steps": int(state.get("var_step", 0)), "seconds": round(state.get("var_time", 0.0)),
           "tokenize_seconds": round(tokenize_s), "batch": a.batch, "lr": a.lr, "style_drop": a.style_drop,
           "scale_balance": a.scale_balance, "coarse_batch": a.coarse_batch, "coarse_scales": a.coarse_scales,
           "seed": a.seed, "data_version": emoji_data.DATA_VERSION,
           "generator_set": emoji_data.EmojiData.generator_train.__doc__.split(",")[0].strip()}
    meta["restyle_runs"] = list(meta.get("restyle_runs", [])) + [run]  # each run continues the previous one
    export_weights(weights, bundle.tokenizer.float(), var.cpu().eval(), classes, defaults=manifest.get("defaults"),
                   meta=meta, var_dtype=torch.float16, styles=d.styles,
                   extra={k: manifest[k] for k in ("controls",) if k in manifest})
    log(f"exported {len(classes)} classes x {len(d.styles)} styles to {weights}")


if __name__ == "__main__":
    main()
