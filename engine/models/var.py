"""VAR: the next-scale prediction transformer, in the official checkpoint layout.

Tokens of all scales form one sequence (coarse to fine). Training / teacher
forcing uses a block-causal mask (a token sees its own and coarser scales);
inference runs one forward per scale against a static KV cache. Conditioning
enters twice: the class embedding is the first scale's token, and it drives
AdaLN in every block and before the head.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..control.signal import ControlSignal, add_control
from ..kv_cache import KVCache
from ..layers import Linear


@dataclass(frozen=True)
class VARConfig:
    num_classes: int = 1000
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    attn_l2_norm: bool = True
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    vocab_size: int = 4096
    cvae: int = 32
    num_styles: int = 0  # > 0: a style embedding added to the class embedding (row num_styles = "any")

    @property
    def tokens_per_image(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


def _official(depth: int, patch_nums: tuple[int, ...] = VARConfig.patch_nums, shared_aln: bool = False) -> VARConfig:
    """The official build: width 64*depth, one 64-wide head per depth unit."""
    return VARConfig(depth=depth, embed_dim=64 * depth, num_heads=depth, patch_nums=patch_nums, shared_aln=shared_aln)


PRESETS: dict[str, VARConfig] = {
    **{f"var-d{d}": _official(d) for d in (16, 20, 24, 30)},
    "var-d36": _official(36, (1, 2, 3, 4, 6, 9, 13, 18, 24, 32), shared_aln=True),
}


@dataclass
class ClassConditioning:
    """What a batch of class labels contributes, for every scale alike."""

    class_BD: torch.Tensor  # (B, C) class embedding (the first scale's token)
    block_mods: list[torch.Tensor]  # per block (B, 1, 6, C) AdaLN modulation
    head_mods: torch.Tensor  # (B, 1, 2, C) AdaLN before the head


MAX_SCALE_MUL = torch.log(torch.tensor(100)).item()  # the reference clamps in float32


class SelfAttention(nn.Module):
    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        C, H = cfg.embed_dim, cfg.num_heads
        self.num_heads, self.head_dim = H, C // H
        self.l2_norm = cfg.attn_l2_norm
        if self.l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), math.log(4.0)))
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.proj = Linear(C, C)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, start: int = 0) -> torch.Tensor:
        """``start``: position of x's first token; with a KV cache, x is appended there."""
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = (self.mat_qkv(x) + bias).view(B, L, 3, self.num_heads, self.head_dim)  # module call: may be quantized
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, L, hs)
        if self.l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(MAX_SCALE_MUL).exp())
            k = F.normalize(k, dim=-1)
        if self.kv_cache is not None:
            k, v = self.kv_cache.write_span(start, k, v)  # everything up to this scale
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=attn_bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))  # (B, L, C)


class FFN(nn.Module):
    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        hidden = round(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = Linear(cfg.embed_dim, hidden)
        self.fc2 = Linear(hidden, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNBlock(nn.Module):
    """Attention + FFN, each modulated by (shift, scale, gamma) predicted from the class."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        C = cfg.embed_dim
        self.C, self.shared_aln = C, cfg.shared_aln
        self.attn = SelfAttention(cfg)
        self.ffn = FFN(cfg)
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        if self.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), Linear(C, 6 * C))

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, 1, 6, C) AdaLN (gamma1, gamma2, scale1, scale2, shift1, shift2) from ``cond``: the (B, C) class
        embedding, or the (B, 1, 6, C) shared-AdaLN output. It depends on the class only: once per image."""
        if self.shared_aln:
            return self.ada_gss + cond
        return self.ada_lin(cond).view(-1, 1, 6, self.C)

    def forward(self, x: torch.Tensor, mods: torch.Tensor, attn_bias: torch.Tensor | None, start: int = 0) -> torch.Tensor:
        """x (B, l, C) under ``mods`` = ``modulation(cond)``."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mods.unbind(2)  # 6 x (B, 1, C)
        x = x + self.attn(self.ln_wo_grad(x).mul(scale1.add(1)).add_(shift1), attn_bias, start).mul_(gamma1)
        x = x + self.ffn(self.ln_wo_grad(x).mul(scale2.add(1)).add_(shift2)).mul(gamma2)
        return x


class AdaLNBeforeHead(nn.Module):
    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.C = cfg.embed_dim
        self.ln_wo_grad = nn.LayerNorm(self.C, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(self.C, 2 * self.C))

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, 1, 2, C) (scale, shift) from the (B, C) class embedding: once per image."""
        return self.ada_lin(cond).view(-1, 1, 2, self.C)

    def forward(self, x: torch.Tensor, mods: torch.Tensor) -> torch.Tensor:
        scale, shift = mods.unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add_(shift)


class SharedAdaLin(Linear):
    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(-1, 1, 6, self.in_features)  # (B, 1, 6, C)


class VAR(nn.Module):
    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, L, S = cfg.embed_dim, cfg.tokens_per_image, len(cfg.patch_nums)
        self.first_l = cfg.patch_nums[0] ** 2
        self.num_classes = cfg.num_classes
        self.word_embed = nn.Linear(cfg.cvae, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # row num_classes = the null class
        if cfg.num_styles > 0:  # absent in the official layout; the "any" row is classifier-free
            self.style_emb = nn.Embedding(cfg.num_styles + 1, C)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))
        self.lvl_embed = nn.Embedding(S, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if cfg.shared_aln else nn.Identity()
        self.blocks = nn.ModuleList([AdaLNBlock(cfg) for _ in range(cfg.depth)])
        self.head_nm = AdaLNBeforeHead(cfg)
        self.head = Linear(C, cfg.vocab_size)
        lvl, bias = self._derived_buffers(torch.device("cpu") if self.pos_1LC.device.type == "meta" else None)
        self.register_buffer("lvl_1L", lvl)  # (1, L) scale index of each token
        self.register_buffer("attn_bias_for_masking", bias)  # (1, 1, L, L) block-causal 0 / -inf
        if self.pos_1LC.device.type != "meta":
            nn.init.trunc_normal_(self.pos_start, std=0.02)
            nn.init.trunc_normal_(self.pos_1LC, std=0.02)

    def _derived_buffers(self, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
        pns = self.cfg.patch_nums
        lvl = torch.cat([torch.full((pn * pn,), i, dtype=torch.int64, device=device) for i, pn in enumerate(pns)])
        L = lvl.numel()
        bias = torch.where(lvl.view(L, 1) >= lvl.view(1, L), 0.0, -torch.inf).to(torch.float32)
        return lvl.view(1, L), bias.view(1, 1, L, L)

    def optional_state_keys(self) -> list[str]:
        """Derived buffers the released files carry; recomputed in post_load anyway."""
        return ["lvl_1L", "attn_bias_for_masking"] + [f"blocks.{i}.attn.zero_k_bias" for i in range(self.cfg.depth)]

    def post_load(self) -> None:
        lvl, bias = self._derived_buffers(torch.device("cpu"))
        self.lvl_1L, self.attn_bias_for_masking = lvl, bias
        for b in self.blocks:
            b.attn.zero_k_bias = torch.zeros(self.cfg.embed_dim, dtype=b.attn.q_bias.dtype)

    # --- shared pieces of the teacher-forced and the cached path ---
    def conditioning(self, labels: torch.Tensor, styles: torch.Tensor | None = None) -> ClassConditioning:
        """Everything that depends on the class alone, computed once per image (not once per scale):
        the class embedding and the AdaLN modulation of every block and of the head. ``styles`` (B,)
        (models with styles only; None = "any") adds a style embedding to the class embedding."""
        cond_BD = self.class_emb(labels)  # (B, C)
        if self.cfg.num_styles > 0:
            if styles is None:
                styles = torch.full_like(labels, self.cfg.num_styles)
            cond_BD = cond_BD + self.style_emb(styles)
        shared = self.shared_ada_lin(cond_BD)
        dtype = self.pos_1LC.dtype  # a float parameter: the head may be quantized
        return ClassConditioning(cond_BD, [b.modulation(shared) for b in self.blocks],
                                 self.head_nm.modulation(cond_BD.to(dtype)))

    def scale_ends(self) -> list[int]:
        """Token count after each scale: (1, 5, 14, ...) for patch_nums (1, 2, 3, ...)."""
        return list(itertools.accumulate(pn * pn for pn in self.cfg.patch_nums))

    def level_pos(self) -> torch.Tensor:
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC  # (1, L, C)

    def first_tokens(self, cond_BD: torch.Tensor, lvl_pos: torch.Tensor) -> torch.Tensor:
        B = cond_BD.shape[0]
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        return sos + lvl_pos[:, :self.first_l]  # (B, first_l, C)

    def logits(self, h: torch.Tensor, head_mods: torch.Tensor) -> torch.Tensor:
        """Head in the model's float dtype (in float32 the reference's path), logits in float32."""
        return self.head(self.head_nm(h.to(self.pos_1LC.dtype), head_mods)).float()  # (B, l, V)

    def forward(self, labels: torch.Tensor, var_input: torch.Tensor,
                styles: torch.Tensor | None = None, control: ControlSignal | None = None) -> torch.Tensor:
        """Teacher forcing: labels (B,), var_input (B, L-first_l, Cvae) -> logits (B, L, V).
        A shorter var_input that ends on a scale boundary gives the first scales' logits alone (the mask
        is block-causal, so they do not depend on finer scales). ``control``: condition tokens over all
        L positions, added before the adapter's blocks."""
        L = self.first_l + var_input.shape[1]
        if L not in self.scale_ends():
            raise ValueError(f"var_input covers {L} tokens, not a whole number of scales {self.scale_ends()}")
        if control is not None and L != self.cfg.tokens_per_image:
            raise ValueError("a control signal needs the whole token sequence")
        cond = self.conditioning(labels, styles)
        lvl_pos = self.level_pos()[:, :L]
        first = self.first_tokens(cond.class_BD, lvl_pos)
        rest = self.word_embed(var_input.to(self.word_embed.weight.dtype)) + lvl_pos[:, self.first_l:]
        x = torch.cat((first, rest), dim=1)  # (B, L, C)
        bias = self.attn_bias_for_masking[..., :L, :L].to(x.dtype)
        for i, (block, mods) in enumerate(zip(self.blocks, cond.block_mods)):
            x = block(add_control(control, i, x, slice(None)), mods, bias)
        return self.logits(x, cond.head_mods)

    # --- KV-cached inference, one call per scale ---
    def setup_caches(self, batch: int, dtype: torch.dtype | None = None) -> None:
        """Static per-block caches for ``batch`` rows and the whole token sequence; reused when they fit."""
        dtype = dtype or self.pos_1LC.dtype  # a float parameter: the head may be quantized
        device = self.pos_1LC.device
        L, H, hd = self.cfg.tokens_per_image, self.cfg.num_heads, self.cfg.head_dim
        for b in self.blocks:
            cache = b.attn.kv_cache
            if cache is None or not cache.holds(batch, L, dtype, device):
                b.attn.kv_cache = KVCache(batch, H, L, hd, dtype=dtype, device=device)

    def clear_caches(self) -> None:
        for b in self.blocks:
            b.attn.kv_cache = None

    def forward_scale(self, x: torch.Tensor, block_mods: list[torch.Tensor], start: int,
                      control: ControlSignal | None = None) -> torch.Tensor:
        """Run one scale's tokens x (B, l, C) at positions [start, start+l) against the cache."""
        span = slice(start, start + x.shape[1])
        for i, (block, mods) in enumerate(zip(self.blocks, block_mods)):
            x = block(add_control(control, i, x, span), mods, None, start)
        return x

    def scale_step(self, x: torch.Tensor, block_mods: list[torch.Tensor], head_mods: torch.Tensor,
                   start: int, control: ControlSignal | None = None) -> torch.Tensor:
        """One scale's decode step: tokens x (B, l, C) at [start, start+l) -> logits (B, l, V) float32.
        The unit that is compiled (one graph per scale); sampling stays outside it."""
        return self.logits(self.forward_scale(x, block_mods, start, control), head_mods)
