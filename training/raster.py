"""Train the bundled raster model ``emoji-raster``: a LlamaGen-architecture class-conditional GPT that
draws the same classes as ``emoji-var``, one token at a time.

    python -m arnodes.training.raster --weights weights --out training/.cache/raster

Stage 1 makes the tokenizer: the bundled emoji-var tokenizer, fine-tuned to quantise its 8x8 feature
map in one scale (``patch_nums = (8,)``: same architecture, codebook and file layout, one grid of 64
tokens instead of six residual scales). Stage 2 trains the GPT (our LlamaGen code and checkpoint layout)
teacher-forced on those tokens, with class dropout for classifier-free guidance. Both stages start from
the bundled model's data set (``data.py``) and class list; seeded and resumable like ``train.py``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine.models.llamagen import LlamaGen, LlamaGenConfig
from ..engine.tokenizers.msvq import MSVQTokenizer
from . import data as emoji_data
from .common import add_where_args, bf16_autocast_pays, pick_device, resume_state, rng_state, run_settings, \
    save_checkpoint, seed_everything, set_rng_state
from .export import BundleLayout, export_weights, read_bundle, write_draft_store
from .generator_stage import train_teacher_forced
from .tokenizer_stage import to_model_images, train_tokenizer

LAYOUT = BundleLayout(name="emoji-raster", family="llamagen", tokenizer_kind="msvq", generator_kind="llamagen",
                      manifest="emoji_raster.json", tokenizer_file="emoji_raster_vq.safetensors",
                      generator_file="emoji_raster_gpt.safetensors")
DRAFT_STORE_FILE = "emoji_raster_drafts.safetensors"
DEFAULTS = {"cfg": 3.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="train the bundled raster model (emoji-raster)")
    p.add_argument("--weights", default=str(Path(__file__).resolve().parent.parent / "weights"),
                   help="folder with the bundled emoji-var model (tokenizer and classes); the export goes here")
    add_where_args(p, str(emoji_data.DEFAULT_CACHE / "raster"), str(emoji_data.DEFAULT_CACHE))
    p.add_argument("--tok-steps", type=int, default=3000)
    p.add_argument("--tok-batch", type=int, default=32)
    p.add_argument("--tok-lr", type=float, default=3e-4)
    p.add_argument("--tok-minutes", type=float, default=12.0)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--gpt-steps", type=int, default=4000)
    p.add_argument("--gpt-batch", type=int, default=64)
    p.add_argument("--gpt-lr", type=float, default=1e-3)
    p.add_argument("--gpt-minutes", type=float, default=30.0)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--ckpt-every", type=int, default=100)
    return p.parse_args(argv)


def single_scale(var_tok: MSVQTokenizer) -> MSVQTokenizer:
    """A copy of the multi-scale tokenizer that quantises only its finest grid (its weights as the start)."""
    cfg = dataclasses.replace(var_tok.cfg, patch_nums=(var_tok.cfg.patch_nums[-1],))
    tok = MSVQTokenizer(cfg)
    sd = {k: v for k, v in var_tok.state_dict().items() if k != "quantize.ema_vocab_hit_SV"}
    tok.load_state_dict(sd, strict=False)
    return tok


def gpt_config(a: argparse.Namespace, num_classes: int, tok: MSVQTokenizer) -> LlamaGenConfig:
    grid = tok.cfg.patch_nums[-1]
    return LlamaGenConfig(dim=a.dim, n_layer=a.layers, n_head=a.heads, num_classes=num_classes,
                          vocab_size=tok.cfg.vocab_size, block_size=grid * grid, class_dropout_prob=a.cond_drop)


def init_gpt(model: LlamaGen, std: float = 0.02) -> None:
    """The official LlamaGen init: linear and embedding weights ~ N(0, 0.02), the output head at zero."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    nn.init.zeros_(model.output.weight)


@torch.no_grad()
def raster_tokens(tok: MSVQTokenizer, images: np.ndarray, device: torch.device, batch: int = 128) -> torch.Tensor:
    """(N, grid*grid) int64 raster-order tokens of uint8 ``images``."""
    tok.eval().to(device)
    return torch.cat([tok.encode_grids(to_model_images(images[i:i + batch], device))[0].flatten(1).cpu()
                      for i in range(0, len(images), batch)])


def training_grids(tok: MSVQTokenizer, d: emoji_data.EmojiData, classes: list[dict], device: torch.device
                   ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(image indices, raster tokens (N, L), class ids (N,)) of the GPT's training images: the data set's
    generator split, restricted to the bundle's classes, tokenized by ``tok``."""
    by_emoji = {c["emoji"]: i for i, c in enumerate(classes)}
    remap = np.array([by_emoji.get(c["emoji"], -1) for c in d.classes])
    idx = d.generator_train()
    idx = idx[remap[d.labels[idx]] >= 0]
    return idx, raster_tokens(tok, d.images[idx], device), torch.from_numpy(remap[d.labels[idx]])


def run(a: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    amp = bf16_autocast_pays(device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    var_bundle, var_manifest, classes = read_bundle(Path(a.weights))
    d = emoji_data.load_for_manifest(a.data_cache, var_manifest, log=log)
    gen = seed_everything(a.seed)
    tok = single_scale(var_bundle.tokenizer)
    gpt = LlamaGen(gpt_config(a, len(classes), tok))
    init_gpt(gpt)

    run_args = run_settings(a)
    state, resumed = resume_state(ckpt_path, run_args)
    if resumed:
        tok.load_state_dict(state["tok"])
        gpt.load_state_dict(state["gpt"])
        set_rng_state(state["rng"], gen)
        log(f"resuming from {ckpt_path}: tokenizer step {state.get('tok_step', 0)}, gpt step {state.get('gpt_step', 0)}")

    def save() -> None:
        state["tok"], state["gpt"], state["rng"] = tok.state_dict(), gpt.state_dict(), rng_state(gen)
        save_checkpoint(ckpt_path, state)

    log(f"device {device}, {len(classes)} classes, tokenizer {sum(p.numel() for p in tok.parameters()) / 1e6:.2f}M "
        f"params, GPT {sum(p.numel() for p in gpt.parameters()) / 1e6:.2f}M params")
    common = dict(gen=gen, device=device, amp=amp, save=save, ckpt_every=a.ckpt_every, threads=a.threads)
    if not state.get("tok_done"):
        train_tokenizer(tok, d.images[d.tokenizer_train()], state, steps=a.tok_steps, batch=a.tok_batch, lr=a.tok_lr,
                        reinit_every=50, budget_s=60 * a.tok_minutes, reseed_all_first=False, **common)
    tok.eval().requires_grad_(False)
    idx, tokens, labels = training_grids(tok, d, classes, device)
    if not state.get("gpt_done"):
        def forward(batch_idx: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = tokens[batch_idx].to(device)
            return gpt(lab, y), y

        train_teacher_forced(gpt, labels, gpt.config.num_classes, forward, state, prefix="gpt", steps=a.gpt_steps,
                             batch=a.gpt_batch, lr=a.gpt_lr, cond_drop=a.cond_drop, budget_s=60 * a.gpt_minutes,
                             **common)
    save()
    log(f"training time: tokenizer {state.get('tok_time', 0):.0f}s ({state.get('tok_step')} steps), "
        f"GPT {state.get('gpt_time', 0):.0f}s ({state.get('gpt_step')} steps)")
    if not a.no_export:
        meta = {"train_seconds": {"tokenizer": round(state.get("tok_time", 0.0)), "generator": round(state.get("gpt_time", 0.0))},
                "steps": {"tokenizer": state.get("tok_step"), "generator": state.get("gpt_step")},
                "generator_images": int(len(idx)), "tokenizer_from": var_manifest["name"], "args": run_args}
        store = write_draft_store(Path(a.weights), DRAFT_STORE_FILE, tokens, labels, gpt.config.vocab_size)
        export_weights(Path(a.weights), tok.cpu(), gpt.cpu(), classes, defaults=DEFAULTS, meta=meta, layout=LAYOUT,
                       var_dtype=torch.float16, extra={"draft_store": store})  # GPT in float16, as emoji-var's
        log(f"exported {LAYOUT.name} to {a.weights}")
    return state


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
