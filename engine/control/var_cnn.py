"""A control adapter for next-scale (VAR) models, in the manner of CAR (Yao et al. 2024).

A small convolutional encoder turns the control map into features on the finest token grid;
each scale gets them average-pooled to its own resolution plus a learned scale embedding, and
a zero-initialised projection per injected block turns them into condition tokens. Zero
projections mean an untrained adapter leaves the base model exactly as it was, which is what
lets the adapter train on a frozen generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .signal import ControlSignal


@dataclass(frozen=True)
class VARControlConfig:
    embed_dim: int  # the generator's width
    depth: int  # the generator's depth (blocks)
    patch_nums: tuple[int, ...]
    image_size: int  # control maps are brought to this size
    channels: tuple[int, ...] = (32, 64, 96, 128)  # encoder widths; each stage after the first halves the size
    inject_every: int = 1  # condition before blocks 0, k, 2k, ...
    in_channels: int = 1  # 1: the map's mean over RGB (edge / silhouette maps are grey)

    def __post_init__(self) -> None:
        stride = 2 ** (len(self.channels) - 1)
        if self.image_size % stride or self.image_size // stride != self.patch_nums[-1]:
            raise InvalidInputError(f"control encoder: {self.image_size}px / {stride} must equal the finest grid "
                                    f"{self.patch_nums[-1]}")
        if not 1 <= self.inject_every <= self.depth:
            raise InvalidInputError(f"inject_every must be in [1, {self.depth}], got {self.inject_every}")

    @property
    def injected_blocks(self) -> tuple[int, ...]:
        return tuple(range(0, self.depth, self.inject_every))


class VARControlAdapter(nn.Module):
    family = "var"

    def __init__(self, cfg: VARControlConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1), nn.SiLU()]
        for a, b in zip(ch, ch[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(b, b, 3, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(*layers)
        self.scale_emb = nn.Parameter(torch.zeros(len(cfg.patch_nums), ch[-1]))
        self.proj = nn.ModuleList(nn.Sequential(nn.Linear(ch[-1], cfg.embed_dim), nn.GELU(approximate="tanh"),
                                                nn.Linear(cfg.embed_dim, cfg.embed_dim))
                                  for _ in cfg.injected_blocks)
        for p in self.proj:
            nn.init.zeros_(p[-1].weight)
            nn.init.zeros_(p[-1].bias)

    def check_generator(self, generator: nn.Module) -> None:
        g = generator.cfg
        if (g.embed_dim, g.depth, tuple(g.patch_nums)) != (self.cfg.embed_dim, self.cfg.depth, tuple(self.cfg.patch_nums)):
            raise InvalidInputError(f"control adapter made for width {self.cfg.embed_dim}, depth {self.cfg.depth}, "
                                    f"scales {self.cfg.patch_nums}; the model has {g.embed_dim}, {g.depth}, {g.patch_nums}")

    def features(self, control: torch.Tensor) -> torch.Tensor:
        """control (B, 3, S, S) in [-1, 1] -> (B, L, C_ctrl) over every scale's positions, coarse to fine."""
        x = control.mean(1, keepdim=True) if self.cfg.in_channels == 1 else control
        if x.shape[-2:] != (self.cfg.image_size,) * 2:
            x = F.interpolate(x, size=(self.cfg.image_size,) * 2, mode="area")
        fine = self.encoder(x.to(self.scale_emb.dtype))  # (B, C_ctrl, pn_last, pn_last)
        per_scale = [F.adaptive_avg_pool2d(fine, pn).flatten(2).transpose(1, 2) + self.scale_emb[i]
                     for i, pn in enumerate(self.cfg.patch_nums)]
        return torch.cat(per_scale, dim=1)

    def forward(self, control: torch.Tensor) -> ControlSignal:
        feats = self.features(control)
        return ControlSignal({b: proj(feats) for b, proj in zip(self.cfg.injected_blocks, self.proj)})
