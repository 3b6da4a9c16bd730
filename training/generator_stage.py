"""Stage 2: train the engine's next-scale generator (``VAR``) on tokens of the frozen tokenizer.

Every training image is tokenised once; VAR is then trained teacher-forced
(``MSVQTokenizer.scales_to_var_input``) with cross-entropy on all scales' tokens.
10% of labels are replaced by the null class so classifier-free guidance works; on a
model with styles, ``style_drop`` of the style labels are replaced by "any" (the
style embedding's last row), so a class can be asked for without a style.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.models.var import VAR
from ..engine.tokenizers.msvq import MSVQTokenizer
from .common import Progress, StageClock, ThreadTuner, cosine_lr
from .tokenizer_stage import autocast, to_model_images


@torch.no_grad()
def tokenize(tok: MSVQTokenizer, images: np.ndarray, device: torch.device, batch: int = 128,
             flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(var_input [N, L-1, Cvae] float32, targets [N, L] int64) for uint8 ``images``."""
    tok.eval().to(device)
    inputs, targets = [], []
    for i in range(0, len(images), batch):
        img = to_model_images(images[i:i + batch], device)
        if flip:
            img = img.flip(3)
        codes = tok.encode_scales(img)
        inputs.append(tok.scales_to_var_input(codes).float().cpu())
        targets.append(torch.cat([c.flatten(1) for c in codes], dim=1).cpu())
    return torch.cat(inputs), torch.cat(targets)


def init_var(model: VAR, std: float = 0.02) -> None:
    """Small-normal init for a freshly built VAR: linear/embedding weights ~ N(0, std), zero biases;
    AdaLN outputs start near zero so every block starts close to the identity."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=std)
    with torch.no_grad():
        model.head.weight.mul_(0.1)
        for block in model.blocks:
            if not model.cfg.shared_aln:
                block.ada_lin[-1].weight.mul_(0.5)
            block.attn.proj.weight.div_((2 * model.cfg.depth) ** 0.5)
            block.ffn.fc2.weight.div_((2 * model.cfg.depth) ** 0.5)


@dataclass(frozen=True)
class CoarseBatch:
    """An extra batch per step on the first ``scales`` scales only. Those few tokens are all the class
    and style decide (finer scales follow from them), and a prefix of 5 tokens costs a 26th of a full
    sequence, so a large batch of them teaches the class/style -> first-tokens mapping cheaply."""

    batch: int = 256
    scales: int = 2


BatchForward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def train_generator(model: VAR, var_input: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
                    state: dict[str, Any], *, gen: torch.Generator, device: torch.device,
                    styles: torch.Tensor | None = None, style_drop: float = 0.5,
                    coarse: CoarseBatch | None = None, **loop: Any) -> None:
    """Train ``model`` teacher-forced (see :func:`train_teacher_forced` for ``loop``); resumes from
    ``state['var_step']`` / ``state['var_opt']``. ``styles`` (N,): each image's style id, for a model with
    ``num_styles`` > 0. ``coarse``: an extra batch on the first scales alone, its loss added."""
    def style_ids(idx: torch.Tensor) -> torch.Tensor | None:
        if styles is None:
            return None
        sty = styles[idx].clone()
        sty[torch.rand(len(idx), generator=gen) < style_drop] = model.cfg.num_styles
        return sty.to(device)

    def coarse_loss() -> torch.Tensor:
        end = model.scale_ends()[coarse.scales - 1]
        idx = torch.randint(0, len(labels), (coarse.batch,), generator=gen)
        lab = labels[idx].clone()
        lab[torch.rand(coarse.batch, generator=gen) < loop["cond_drop"]] = model.cfg.num_classes  # as the main batch
        logits = model(lab.to(device), var_input[idx, :end - model.first_l].to(device), style_ids(idx))
        return weighted_cross_entropy(logits, targets[idx, :end].to(device), None)

    def forward(idx: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = (model(lab, var_input[idx].to(device), style_ids(idx)), targets[idx].to(device))
        return out + (coarse_loss(),) if coarse is not None else out

    train_teacher_forced(model, labels, model.cfg.num_classes, forward, state, prefix="var", gen=gen, device=device,
                         **loop)


def scale_balanced_weights(patch_nums: tuple[int, ...], balance: float) -> torch.Tensor:
    """Per-token loss weights (mean 1) for next-scale training. With plain token averaging the 1x1 and
    2x2 scales are 5 of 130 tokens, yet they are the only ones predicted from the class (and style)
    alone: teacher forcing lets every finer scale read the drawing off the coarser ones, so a
    generator can memorise the fine scales and still ignore its style input (emoji-var v2 did).
    ``balance`` 0 = every token equal, 1 = every scale equal."""
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"scale balance must be in [0, 1], got {balance}")
    sizes = torch.tensor([p * p for p in patch_nums], dtype=torch.float32)
    per_scale = sizes.sum() / (len(patch_nums) * sizes)  # every scale's tokens together weigh the same
    w = torch.repeat_interleave((1.0 - balance) + balance * per_scale, sizes.long())
    return w / w.mean()


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean cross-entropy over (B, L) positions, each position weighted by ``weights`` (L,) when given."""
    flat = logits.float().reshape(-1, logits.shape[-1])
    if weights is None:
        return F.cross_entropy(flat, targets.reshape(-1))
    ce = F.cross_entropy(flat, targets.reshape(-1), reduction="none").view(targets.shape)
    return (ce * weights.to(ce.device)).mean()


def train_teacher_forced(model: nn.Module, labels: torch.Tensor, null_class: int, forward: BatchForward,
                         state: dict[str, Any], *, prefix: str, steps: int, batch: int, lr: float,
                         gen: torch.Generator, device: torch.device, amp: bool, cond_drop: float,
                         save: Callable[[], None], ckpt_every: int, budget_s: float = 0.0, threads: int = 2,
                         tune_threads: bool = True, token_weights: torch.Tensor | None = None) -> None:
    """The training loop every class-conditional generator shares: AdamW with cosine decay, ``cond_drop`` of
    the labels replaced by ``null_class`` (classifier-free guidance), cross-entropy of ``forward(idx, labels)``
    = (logits (B, L, V), targets (B, L)[, auxiliary loss to add]); resumable from
    ``state[prefix + '_step' / '_opt' / '_time']``. ``token_weights`` (L,), mean 1: per-position weights of
    the cross-entropy (None: all equal)."""
    model.train().to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_" not in n and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_" not in n and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    if state.get(f"{prefix}_opt"):
        opt.load_state_dict(state[f"{prefix}_opt"])
    step = int(state.get(f"{prefix}_step", 0))
    bar = Progress(steps, "generator", start=step)
    clock = StageClock(steps, budget_s, float(state.get(f"{prefix}_time", 0.0)))
    tuner = ThreadTuner(threads, enabled=tune_threads)
    warm = max(1, min(200, steps // 10))
    try:
        while not clock.done(step):
            t_step = time.time()
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, clock.progress(step), lr, warm)
            idx = torch.randint(0, len(labels), (batch,), generator=gen)
            lab = labels[idx].clone()
            lab[torch.rand(batch, generator=gen) < cond_drop] = null_class
            with autocast(device, amp):
                logits, y, *extra = forward(idx, lab.to(device))
            loss = weighted_cross_entropy(logits, y, token_weights)
            if extra:  # a model's auxiliary loss, added as it comes
                loss = loss + extra[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            opt.step()
            step += 1
            with torch.no_grad():
                acc = (logits.argmax(-1) == y).float().mean().item()
            bar.update(1, loss=loss.item(), acc=acc)
            tuner.record(time.time() - t_step)
            if step % ckpt_every == 0 or clock.done(step):
                state[f"{prefix}_step"] = step
                state[f"{prefix}_opt"] = opt.state_dict()
                state[f"{prefix}_time"] = clock.spent()
                state[f"{prefix}_done"] = clock.done(step)
                save()
    finally:
        bar.close()
