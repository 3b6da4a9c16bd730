"""Classifier-free guidance: how cond/uncond logits mix, and when.

Each family keeps its own arithmetic form because seeded parity with the
reference code depends on the exact floating-point expression.
"""
from __future__ import annotations

import torch


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """LlamaGen form: ``uncond + (cond - uncond) * scale`` (scale 1 = no guidance)."""
    return uncond + (cond - uncond) * scale


def cfg_mix_var(cond: torch.Tensor, uncond: torch.Tensor, t: float) -> torch.Tensor:
    """VAR form: ``(1 + t) * cond - t * uncond`` (t 0 = purely conditional)."""
    return (1 + t) * cond - t * uncond


def var_linear_ramp(cfg: float, scale_index: int, num_scales: int) -> float:
    """VAR's schedule: guidance grows linearly from 0 at the first scale to ``cfg`` at the last."""
    if num_scales <= 1:
        return cfg
    return cfg * (scale_index / (num_scales - 1))


def var_constant(cfg: float, scale_index: int, num_scales: int) -> float:
    """Same guidance at every scale (an arnodes option, not the official default)."""
    return cfg


VAR_SCHEDULES = {"linear": var_linear_ramp, "constant": var_constant}


def llamagen_guided_step(token_index: int, cfg_interval: int) -> bool:
    """LlamaGen's ``cfg_interval``: token 0 is always guided; token t>=1 unless ``t-1 > interval``."""
    if token_index == 0 or cfg_interval <= -1:
        return True
    return not (token_index - 1 > cfg_interval)
