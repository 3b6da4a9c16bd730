"""Stage 1: train the engine's multi-scale VQ tokenizer (``MSVQTokenizer``) on emoji images.

Loss: pixel MSE + 0.1 * L1 + the quantiser's own commitment/codebook loss
(straight-through). Small data leaves most codes unused, so the codebook is
initialised from encoder outputs and codes unused for ``reinit_every`` steps
are re-seeded from recent residuals (dead-code re-initialisation).
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.tokenizers.msvq import MSVQTokenizer
from .common import Progress, StageClock, ThreadTuner, cosine_lr


def to_model_images(batch_uint8: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B,H,W,3] -> float [B,3,H,W] in [-1, 1], contiguous: a channels-last input would carry
    its memory format through every convolution, which is ~2.3x slower on CPU for this tokenizer."""
    t = torch.as_tensor(batch_uint8).to(device)
    return t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast (about 2x faster convolutions on recent CPUs), or a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class CodeUsage:
    """Counts code hits and keeps a sample of quantiser inputs by wrapping ``nearest_code``
    on the tokenizer's quantiser instance (training only; the engine class is untouched)."""

    def __init__(self, tok: MSVQTokenizer, keep: int = 4096) -> None:
        self.q = tok.quantize
        self.hits = torch.zeros(tok.cfg.vocab_size, dtype=torch.long)
        self.keep = keep
        self.samples: list[torch.Tensor] = []
        inner = self.q.nearest_code

        def counting(z_NC: torch.Tensor) -> torch.Tensor:
            idx = inner(z_NC)
            self.hits += torch.bincount(idx.flatten().cpu(), minlength=self.hits.numel())
            self.samples.append(z_NC.detach()[: self.keep])
            return idx

        self.q.nearest_code = counting  # instance attribute shadows the method

    def detach(self) -> None:
        if "nearest_code" in self.q.__dict__:
            del self.q.nearest_code

    def pool(self) -> torch.Tensor:
        z = torch.cat(self.samples) if self.samples else torch.empty(0)
        self.samples = []
        return z

    @torch.no_grad()
    def reseed(self, gen: torch.Generator, all_codes: bool = False) -> int:
        """Replace unused (or all) codes by random recent quantiser inputs plus a little noise."""
        pool = self.pool()
        dead = torch.arange(self.hits.numel()) if all_codes else torch.nonzero(self.hits == 0).flatten()
        self.hits.zero_()
        if len(dead) == 0 or len(pool) == 0:
            return 0
        pick = torch.randint(0, len(pool), (len(dead),), generator=gen)
        w = self.q.embedding.weight
        new = pool[pick.to(pool.device)].float()
        new = new + 0.01 * new.std() * torch.randn(new.shape, generator=gen).to(new.device)
        w.data[dead.to(w.device)] = new.to(w.dtype)
        return len(dead)


def tokenizer_step(tok: MSVQTokenizer, img: torch.Tensor, amp: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward: encoder/decoder under autocast, the quantiser in float32 (exact nearest codes)."""
    with autocast(img.device, amp):
        f = tok.quant_conv(tok.encoder(img))
    f_hat, vq_loss = tok.quantize(f.float())
    with autocast(img.device, amp):
        rec = tok.decoder(tok.post_quant_conv(f_hat))
    rec = rec.float()
    mse = F.mse_loss(rec, img)
    l1 = (rec - img).abs().mean()
    loss = mse + 0.1 * l1 + vq_loss
    psnr = 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10))
    return loss, {"mse": mse.item(), "vq": vq_loss.item(), "psnr": psnr.item()}


def train_tokenizer(tok: MSVQTokenizer, images: np.ndarray, state: dict[str, Any], *, steps: int, batch: int,
                    lr: float, gen: torch.Generator, device: torch.device, amp: bool, reinit_every: int,
                    save: Callable[[], None], ckpt_every: int, budget_s: float = 0.0,
                    threads: int = 2, tune_threads: bool = True, reseed_all_first: bool = True) -> None:
    """Train ``tok`` for ``steps`` on uint8 ``images``; resumes from ``state['tok_step']``. A fresh tokenizer
    re-seeds its whole codebook from encoder outputs at the first step; a fine-tune (``reseed_all_first``
    False) keeps its codebook and re-seeds only unused codes.

    ``state`` holds 'tok_opt' (optimizer state) and 'tok_step'; ``save`` persists it."""
    tok.train().to(device)
    opt = torch.optim.AdamW(tok.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    if state.get("tok_opt"):
        opt.load_state_dict(state["tok_opt"])
    usage = CodeUsage(tok)
    step = int(state.get("tok_step", 0))
    bar = Progress(steps, "tokenizer", start=step)
    clock = StageClock(steps, budget_s, float(state.get("tok_time", 0.0)))
    tuner = ThreadTuner(threads, enabled=tune_threads)
    warm = max(1, min(100, steps // 10))
    try:
        while not clock.done(step):
            t_step = time.time()
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, clock.progress(step), lr, warm)
            idx = torch.randint(0, len(images), (batch,), generator=gen).numpy()
            img = to_model_images(images[idx], device)
            flip = torch.rand(batch, generator=gen) < 0.5
            img = torch.where(flip.to(device).view(-1, 1, 1, 1), img.flip(3), img)
            loss, info = tokenizer_step(tok, img, amp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
            opt.step()
            step += 1
            if (step == 1 and reseed_all_first) or (step % reinit_every == 0 and clock.progress(step) < 0.8):
                info["reseeded"] = usage.reseed(gen, all_codes=(step == 1))
            elif step % reinit_every == 0:
                usage.pool()
            if len(usage.samples) > 64:
                usage.samples = usage.samples[-32:]
            bar.update(1, **info)
            tuner.record(time.time() - t_step)
            if step % ckpt_every == 0 or clock.done(step):
                state["tok_step"] = step
                state["tok_opt"] = opt.state_dict()
                state["tok_time"] = clock.spent()
                state["tok_done"] = clock.done(step)
                save()
    finally:
        usage.detach()
        bar.close()
