"""VAR's multi-scale residual VQ-VAE tokenizer, in the official checkpoint layout.

An image becomes a pyramid of token grids (coarse to fine, ``patch_nums``); each
scale quantises what the coarser scales left unexplained (the residual), and the
decoder sees f_hat, the sum of every scale's upsampled, phi-refined embedding.
Decoding from the first k scales only is what super-resolve / variation build on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .blocks import Downsample, FusedQKVAttnBlock, ResnetBlock, Upsample, decode_cpu_friendly, group_norm, swish


@dataclass(frozen=True)
class MSVQConfig:
    vocab_size: int = 4096
    z_channels: int = 32  # Cvae: codebook embedding width
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    quant_resi: float = 0.5
    share_quant_resi: int = 4  # 0: one phi per scale, 1: one shared phi, K>=2: K phis by scale position
    using_sa: bool = True
    using_mid_sa: bool = True
    dropout: float = 0.0
    beta: float = 0.25
    quant_conv_ks: int = 3
    in_channels: int = 3

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    @property
    def tokens_per_image(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)


PRESETS: dict[str, MSVQConfig] = {
    "vae_ch160v4096z32": MSVQConfig(),
    "vae_ch160v4096z32-512": MSVQConfig(patch_nums=(1, 2, 3, 4, 6, 9, 13, 18, 24, 32)),
}


class Encoder(nn.Module):
    def __init__(self, cfg: MSVQConfig) -> None:
        super().__init__()
        ch, mult, n = cfg.ch, cfg.ch_mult, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        in_mult = (1,) + tuple(mult)
        self.down = nn.ModuleList()
        for i in range(n):
            level = nn.Module()
            c_in, c_out = ch * in_mult[i], ch * mult[i]
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(c_in, c_out, cfg.dropout))
                c_in = c_out
                if i == n - 1 and cfg.using_sa:
                    level.attn.append(FusedQKVAttnBlock(c_in))
            if i != n - 1:
                level.downsample = Downsample(c_in)
            self.down.append(level)
        self.mid = _Mid(c_in, cfg)
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        return self.conv_out(swish(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: MSVQConfig) -> None:
        super().__init__()
        ch, mult, n = cfg.ch, cfg.ch_mult, len(cfg.ch_mult)
        c_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, 1, 1)
        self.mid = _Mid(c_in, cfg)
        levels: list[nn.Module] = []
        for i in reversed(range(n)):
            level = nn.Module()
            c_out = ch * mult[i]
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(c_in, c_out, cfg.dropout))
                c_in = c_out
                if i == n - 1 and cfg.using_sa:
                    level.attn.append(FusedQKVAttnBlock(c_in))
            if i != 0:
                level.upsample = Upsample(c_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # indexed by level: up[n-1] is the lowest resolution, run first
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.in_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class _Mid(nn.Module):
    def __init__(self, channels: int, cfg: MSVQConfig) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, cfg.dropout)
        self.attn_1 = FusedQKVAttnBlock(channels) if cfg.using_mid_sa else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, cfg.dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Phi(nn.Conv2d):
    """The per-scale residual refinement: ``(1-r)*h + r*conv3x3(h)``."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


class PhiSet(nn.Module):
    """Which phi refines scale si. Key layouts follow the official K=0 / K=1 / K>=2 variants."""

    def __init__(self, channels: int, ratio: float, share: int, num_scales: int) -> None:
        super().__init__()
        make = (lambda: Phi(channels, ratio)) if abs(ratio) > 1e-6 else nn.Identity
        self.num_scales = num_scales
        if share == 1:
            self.qresi = make()
            self._index = [0] * num_scales
            return
        count = num_scales if share == 0 else share
        convs = nn.ModuleList([make() for _ in range(count)])
        if share == 0:
            for i, m in enumerate(convs):  # keys quant_resi.{i}.weight
                self.add_module(str(i), m)
        else:
            self.qresi_ls = convs
        self._convs = list(convs)
        self._index = [phi_index(si, num_scales, count) for si in range(num_scales)]

    def forward(self, si: int, h: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "qresi"):
            return self.qresi(h)
        return self._convs[self._index[si]](h)


def phi_index(si: int, num_scales: int, count: int) -> int:
    """The official tick rule, in float64 numpy, so exact ties round the same way (released: [0,0,1,1,1,2,2,3,3,3])."""
    ticks = np.linspace(1 / 3 / count, 1 - 1 / 3 / count, count) if count == 4 else \
        np.linspace(1 / 2 / count, 1 - 1 / 2 / count, count)
    at = si / (num_scales - 1) if num_scales > 1 else 0.0
    return int(np.argmin(np.abs(ticks - at)))


class ResidualQuantizer(nn.Module):
    def __init__(self, cfg: MSVQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        # training statistics carried by the released checkpoints; unused at inference
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(cfg.patch_nums), cfg.vocab_size))
        self.quant_resi = PhiSet(cfg.z_channels, cfg.quant_resi, cfg.share_quant_resi, len(cfg.patch_nums))

    def nearest_code(self, z_NC: torch.Tensor) -> torch.Tensor:
        """argmin of |z|^2 + |e|^2 - 2 z.e, computed in the reference's order (first index on ties)."""
        w = self.embedding.weight
        d = z_NC.square().sum(dim=1, keepdim=True) + w.square().sum(dim=1)  # (N, V)
        d.addmm_(z_NC, w.T, alpha=-2, beta=1)
        return d.argmin(dim=1)

    def upsample_embedding(self, si: int, codes_Bhw: torch.Tensor) -> torch.Tensor:
        """Phi-refined embedding of scale si's codes at the finest grid size: (B, Cvae, H, W)."""
        h = self.embedding(codes_Bhw).permute(0, 3, 1, 2)  # (B, Cvae, pn, pn)
        return self.refine(si, h)

    def refine(self, si: int, h_BChw: torch.Tensor) -> torch.Tensor:
        last = self.cfg.patch_nums[-1]
        if si != len(self.cfg.patch_nums) - 1:
            h_BChw = F.interpolate(h_BChw, size=(last, last), mode="bicubic")
        return self.quant_resi(si, h_BChw.contiguous())

    def f_to_codes(self, f: torch.Tensor) -> list[torch.Tensor]:
        """Residual quantisation of encoder features f (B, Cvae, H, W) -> per-scale codes (B, pn, pn)."""
        B, C, H, W = f.shape
        f_rest = f.detach().clone()
        codes: list[torch.Tensor] = []
        S = len(self.cfg.patch_nums)
        for si, pn in enumerate(self.cfg.patch_nums):
            z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != S - 1 else f_rest
            idx = self.nearest_code(z.permute(0, 2, 3, 1).reshape(-1, C)).view(B, pn, pn)
            f_rest.sub_(self.upsample_embedding(si, idx))
            codes.append(idx)
        return codes

    def codes_to_fhat(self, codes: list[torch.Tensor], upto: int | None = None) -> torch.Tensor:
        """Sum of the first ``upto`` scales' refined embeddings (all scales when None)."""
        n = len(codes) if upto is None else upto
        last = self.cfg.patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(codes[0].shape[0], self.cfg.z_channels, last, last)
        for si in range(n):
            f_hat.add_(self.upsample_embedding(si, codes[si]))
        return f_hat

    def next_scale_input(self, si: int, f_hat: torch.Tensor, h_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add scale si's embedding (B, Cvae, pn, pn) to f_hat; return f_hat and the next scale's input map."""
        f_hat = f_hat + self.refine(si, h_BChw)
        if si == len(self.cfg.patch_nums) - 1:
            return f_hat, f_hat
        pn_next = self.cfg.patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training path: straight-through f_hat and the commitment/codebook loss."""
        B, C, H, W = f.shape
        f_detached = f.detach()
        f_rest = f_detached.clone()
        f_hat = torch.zeros_like(f_rest)
        loss = f.new_zeros(())
        S = len(self.cfg.patch_nums)
        for si, pn in enumerate(self.cfg.patch_nums):
            z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != S - 1 else f_rest
            with torch.no_grad():
                idx = self.nearest_code(z.permute(0, 2, 3, 1).reshape(-1, C)).view(B, pn, pn)
            h = self.upsample_embedding(si, idx)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            loss = loss + F.mse_loss(f_hat.detach(), f).mul(self.cfg.beta) + F.mse_loss(f_hat, f_detached)
        return (f_hat.detach() - f_detached) + f, loss / S


class MSVQTokenizer(nn.Module):
    """Images [B, 3, H, W] in [-1, 1] <-> per-scale token grids [(B, pn, pn) int64, ...]."""

    OPTIONAL_STATE_KEYS = ("quantize.ema_vocab_hit_SV",)

    def __init__(self, cfg: MSVQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = ResidualQuantizer(cfg)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, 1, ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, 1, ks // 2)

    def remap_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The released VAE serves several patch_nums; its per-scale hit statistics may not fit ours."""
        key = "quantize.ema_vocab_hit_SV"
        if key in sd and tuple(sd[key].shape) != tuple(self.quantize.ema_vocab_hit_SV.shape):
            sd = {k: v for k, v in sd.items() if k != key}
        return sd

    # --- family-agnostic tokenizer API (shared with the LlamaGen VQ) ---
    @property
    def downsample(self) -> int:
        return self.cfg.downsample

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def grid_shapes_for(self, image_size: int | None = None) -> list[tuple[int, int]]:
        if image_size is not None and image_size != self.cfg.image_size:
            raise InvalidInputError(f"this tokenizer works at {self.cfg.image_size}px, not {image_size}px")
        return [(pn, pn) for pn in self.cfg.patch_nums]

    def encode_grids(self, img: torch.Tensor) -> list[torch.Tensor]:
        return self.encode_scales(img)

    def decode_grids(self, grids: list[torch.Tensor], upto: int | None = None) -> torch.Tensor:
        return self.decode_scales(grids, upto)

    # --- VAR-specific API ---
    def check_image(self, img: torch.Tensor) -> None:
        size = self.cfg.image_size
        if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] != self.cfg.in_channels:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise InvalidInputError(f"tokenizer input must be [B, {self.cfg.in_channels}, H, W], got {shape}")
        if img.shape[2] != size or img.shape[3] != size:
            raise InvalidInputError(f"tokenizer input must be {size}x{size} (patch_nums[-1]={self.cfg.patch_nums[-1]} x "
                                    f"downsample {self.cfg.downsample}), got {img.shape[2]}x{img.shape[3]}; resize it first")
        if not torch.isfinite(img).all():
            raise InvalidInputError("tokenizer input contains NaN or infinite values")

    @torch.no_grad()
    def encode_scales(self, img: torch.Tensor) -> list[torch.Tensor]:
        self.check_image(img)
        f = self.quant_conv(self.encoder(img.to(self.quant_conv.weight.dtype)))
        return self.quantize.f_to_codes(f)

    def check_codes(self, codes: list[torch.Tensor], upto: int | None = None) -> int:
        S = len(self.cfg.patch_nums)
        n = len(codes) if upto is None else upto
        if not 1 <= n <= S or len(codes) < n:
            raise InvalidInputError(f"need between 1 and {S} scales of codes (got {len(codes)}, upto={upto})")
        for si in range(n):
            pn = self.cfg.patch_nums[si]
            if codes[si].ndim != 3 or tuple(codes[si].shape[1:]) != (pn, pn):
                raise InvalidInputError(f"scale {si} codes must be (B, {pn}, {pn}), got {tuple(codes[si].shape)}")
            if codes[si].numel() and (int(codes[si].min()) < 0 or int(codes[si].max()) >= self.cfg.vocab_size):
                raise InvalidInputError(f"scale {si} has token ids outside [0, {self.cfg.vocab_size})")
        return n

    @torch.no_grad()
    def scales_to_fhat(self, codes: list[torch.Tensor], upto: int | None = None) -> torch.Tensor:
        n = self.check_codes(codes, upto)
        return self.quantize.codes_to_fhat(codes, n)

    @torch.no_grad()
    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        return decode_cpu_friendly(self.decoder, self.post_quant_conv(f_hat)).clamp_(-1, 1)

    @torch.no_grad()
    def decode_scales(self, codes: list[torch.Tensor], upto: int | None = None) -> torch.Tensor:
        """Image from the first ``upto`` scales (all when None): partial reconstruction for SR / variation."""
        return self.fhat_to_img(self.scales_to_fhat(codes, upto))

    @torch.no_grad()
    def scales_to_var_input(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input of VAR: for each scale after the first, f_hat so far area-downsampled
        to that scale, flattened row-major -> (B, L - first_l, Cvae)."""
        self.check_codes(codes)
        B = codes[0].shape[0]
        last = self.cfg.patch_nums[-1]
        f_hat = self.embedding_weight.new_zeros(B, self.cfg.z_channels, last, last)
        inputs = []
        for si in range(len(self.cfg.patch_nums) - 1):
            f_hat.add_(self.quantize.upsample_embedding(si, codes[si]))
            pn = self.cfg.patch_nums[si + 1]
            nxt = F.interpolate(f_hat, size=(pn, pn), mode="area")  # (B, Cvae, pn, pn)
            inputs.append(nxt.view(B, self.cfg.z_channels, -1).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    @property
    def embedding_weight(self) -> torch.Tensor:
        return self.quantize.embedding.weight

    def next_scale_input(self, si: int, f_hat: torch.Tensor, h_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.quantize.next_scale_input(si, f_hat, h_BChw)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: (reconstruction, vq loss) with a straight-through estimator."""
        f_hat, vq_loss = self.quantize(self.quant_conv(self.encoder(img)))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss
