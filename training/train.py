"""Train the bundled emoji model: MSVQ tokenizer, then a VAR generator, then export to a weights dir.

    python -m arnodes.training.train --out training/.cache/run --export weights

Reproducible with ``--seed``; resumable (re-run the same command: it continues
from ``<out>/ckpt.pt``); progress on stderr; CUDA when available, else CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.models.var import VAR, VARConfig
from ..engine.tokenizers.msvq import MSVQConfig, MSVQTokenizer
from . import data as emoji_data
from .common import (bf16_autocast_pays, pick_device, resume_state, rng_state, run_settings, save_checkpoint,
                     seed_everything, set_rng_state)
from .export import export_weights
from .generator_stage import init_var, tokenize, train_generator
from .tokenizer_stage import train_tokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="train the emoji MSVQ tokenizer + VAR generator")
    p.add_argument("--out", default=str(emoji_data.DEFAULT_CACHE / "run"), help="checkpoint / log directory")
    p.add_argument("--export", default=None, help="write the bundled weights (safetensors, json) here at the end")
    p.add_argument("--data-cache", default=str(emoji_data.DEFAULT_CACHE))
    p.add_argument("--data-classes", type=int, default=None, help="classes rendered for the data set (default all)")
    p.add_argument("--classes", type=int, default=None, help="classes the generator learns (stratified subset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fixed-threads", action="store_true",
                   help="always use --threads (default: drop to 1 thread while that is faster on a busy CPU)")
    p.add_argument("--no-amp", action="store_true", help="train in float32 instead of bfloat16 autocast")
    # tokenizer
    p.add_argument("--patch-nums", default="1,2,3,4,6,8")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--cvae", type=int, default=16)
    p.add_argument("--tok-ch", type=int, default=32)
    p.add_argument("--tok-ch-mult", default="1,1,2,2")
    p.add_argument("--tok-res-blocks", type=int, default=1)
    p.add_argument("--tok-steps", type=int, default=1200)
    p.add_argument("--tok-batch", type=int, default=32)
    p.add_argument("--tok-lr", type=float, default=1e-3)
    p.add_argument("--tok-minutes", type=float, default=0.0, help="wall-time budget of the stage (0: none)")
    p.add_argument("--reinit-every", type=int, default=50)
    # generator
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--embed-dim", type=int, default=192)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--var-steps", type=int, default=1000)
    p.add_argument("--var-batch", type=int, default=64)
    p.add_argument("--var-lr", type=float, default=1e-3)
    p.add_argument("--var-minutes", type=float, default=0.0, help="wall-time budget of the stage (0: none)")
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--ckpt-every", type=int, default=100)
    return p.parse_args(argv)


def ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def configs(a: argparse.Namespace, num_classes: int) -> tuple[MSVQConfig, VARConfig]:
    pns = ints(a.patch_nums)
    tcfg = MSVQConfig(vocab_size=a.vocab, z_channels=a.cvae, ch=a.tok_ch, ch_mult=ints(a.tok_ch_mult),
                      num_res_blocks=a.tok_res_blocks, patch_nums=pns, quant_resi=0.5, share_quant_resi=4,
                      using_sa=True, using_mid_sa=True)
    vcfg = VARConfig(num_classes=num_classes, depth=a.depth, embed_dim=a.embed_dim, num_heads=a.heads,
                     patch_nums=pns, vocab_size=a.vocab, cvae=a.cvae, shared_aln=False, attn_l2_norm=True)
    return tcfg, vcfg


def generator_classes(d: emoji_data.EmojiData, n: int | None) -> list[int]:
    """Original class ids of the generator's classes (group-stratified subset when ``n`` is set)."""
    return emoji_data.stratified_pick([c["group"] for c in d.classes], n)


def generator_set(d: emoji_data.EmojiData, class_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(image indices, remapped labels) of the generator's training images."""
    remap = np.full(len(d.classes), -1, np.int64)
    remap[class_ids] = np.arange(len(class_ids))
    idx = d.generator_train()
    idx = idx[remap[d.labels[idx]] >= 0]
    return idx, remap[d.labels[idx]]


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) both stages; returns the final state dict (also saved to ``<out>/ckpt.pt``)."""
    torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    amp = not a.no_amp and bf16_autocast_pays(device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    d = emoji_data.load_dataset(a.data_cache, a.data_classes, seed=0, log=log)
    class_ids = generator_classes(d, a.classes)
    classes = [d.classes[i] for i in class_ids]
    tcfg, vcfg = configs(a, len(classes))
    gen = seed_everything(a.seed)
    tok, var = MSVQTokenizer(tcfg), VAR(vcfg)
    init_var(var)

    state, resumed = resume_state(ckpt_path, run_settings(a))
    if resumed:
        tok.load_state_dict(state["tok"])
        var.load_state_dict(state["var"])
        set_rng_state(state["rng"], gen)
        log(f"resuming from {ckpt_path}: tokenizer step {state.get('tok_step', 0)}, "
            f"generator step {state.get('var_step', 0)}")

    def save() -> None:
        state["tok"], state["var"], state["rng"] = tok.state_dict(), var.state_dict(), rng_state(gen)
        save_checkpoint(ckpt_path, state)

    log(f"device {device}, amp {amp}, {len(classes)} generator classes, "
        f"tokenizer {sum(p.numel() for p in tok.parameters()) / 1e6:.2f}M params, "
        f"VAR {sum(p.numel() for p in var.parameters()) / 1e6:.2f}M params")
    common = dict(gen=gen, device=device, amp=amp, save=save, ckpt_every=a.ckpt_every, threads=a.threads,
                  tune_threads=not a.fixed_threads)
    if not state.get("tok_done"):
        tok_images = d.images[d.tokenizer_train()]
        train_tokenizer(tok, tok_images, state, steps=a.tok_steps, batch=a.tok_batch, lr=a.tok_lr,
                        reinit_every=a.reinit_every, budget_s=60 * a.tok_minutes, **common)
    tok.eval().requires_grad_(False)
    if not state.get("var_done"):
        t0 = time.time()
        idx, labels = generator_set(d, class_ids)
        var_input, targets = tokenize(tok, d.images[idx], device)
        state["tokenize_time"] = time.time() - t0
        train_generator(var, var_input, targets, torch.from_numpy(labels), state, steps=a.var_steps,
                        batch=a.var_batch, lr=a.var_lr, cond_drop=a.cond_drop, budget_s=60 * a.var_minutes,
                        **common)
    save()
    log(f"training time: tokenizer {state.get('tok_time', 0):.0f}s ({state.get('tok_step')} steps), "
        f"generator {state.get('var_time', 0):.0f}s ({state.get('var_step')} steps)")
    if a.export:
        export_weights(Path(a.export), tok.cpu(), var.cpu(), classes, meta={
            "train_seconds": {"tokenizer": round(state.get("tok_time", 0.0)),
                              "generator": round(state.get("var_time", 0.0))},
            "steps": {"tokenizer": state.get("tok_step"), "generator": state.get("var_step")},
            "args": run_settings(a)})
        log(f"exported to {a.export}")
    return state


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
