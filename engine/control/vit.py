"""A plain ViT encoder in the Hugging Face ``ViTModel`` key layout (transformers 4.x), no pooler.

ControlAR's class-to-image adapters embed a ViT-S/16 this way (``adapter.model.*``). Written
here rather than imported so that loading a control checkpoint needs no ``transformers`` and
the key names stay those of the released files (transformers 5 renamed them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError


@dataclass(frozen=True)
class ViTConfig:
    """The ``ViTConfig`` fields that shape the forward pass (ViT-S/16 at 224 px by default)."""

    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    intermediate_size: int = 1536
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise InvalidInputError(f"ViT hidden_size {self.hidden_size} must divide into "
                                    f"{self.num_attention_heads} heads")

    @property
    def position_grid(self) -> int:
        return self.image_size // self.patch_size


class _Embeddings(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, cfg.position_grid ** 2 + 1, cfg.hidden_size))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size,
                                                     stride=cfg.patch_size)

    def positions(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings for a grid_h x grid_w patch grid: the trained square grid, bicubically
        resampled when the grid differs (``interpolate_pos_encoding=True`` in transformers)."""
        pos = self.position_embeddings
        n = pos.shape[1] - 1
        if n == grid_h * grid_w and grid_h == grid_w:
            return pos
        side, dim = math.isqrt(n), pos.shape[-1]
        grid = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embeddings.projection(x)  # (B, D, h, w)
        h, w = patches.shape[-2:]
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        return tokens + self.positions(h, w)  # (B, 1 + h*w, D)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.qkv_bias)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.qkv_bias)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (m(x).view(B, N, self.heads, D // self.heads).transpose(1, 2) for m in (self.query, self.key, self.value))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)


class _Layer(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then h + mlp(ln(h)) with an exact-erf GELU."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        D = cfg.hidden_size
        self.layernorm_before = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.attention = nn.Module()
        self.attention.attention = _SelfAttention(cfg)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(D, D)
        self.layernorm_after = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(D, cfg.intermediate_size)
        self.output = nn.Module()
        self.output.dense = nn.Linear(cfg.intermediate_size, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention.output.dense(self.attention.attention(self.layernorm_before(x)))
        return h + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(h))))


class ViTEncoder(nn.Module):
    """Image (B, C, H, W) -> patch tokens (B, (H/p)(W/p), D), the CLS token dropped."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = _Embeddings(cfg)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    @property
    def out_dim(self) -> int:
        return self.cfg.hidden_size

    @property
    def pixels_per_token(self) -> int:
        return self.cfg.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embeddings(x)
        for layer in self.encoder.layer:
            h = layer(h)
        return self.layernorm(h)[:, 1:]
