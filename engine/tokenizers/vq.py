"""LlamaGen's single-scale VQ tokenizer: image -> one raster token grid -> image.

Same parameter names as the official ``VQModel`` (``encoder.conv_blocks.{i}.res/attn``,
``quantize.embedding.weight``, ``quant_conv`` ...), so released checkpoints load
strictly. The quantizer looks codes up in the L2-normalised codebook (the stored
rows are not unit norm), exactly as the official encode and ``decode_code`` do.

Tensors: images ``[B, 3, H, W]`` in ``[-1, 1]``; latents ``[B, E, h, w]``;
codes ``[B, h, w]`` int64 with ``h = H / downsample``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .blocks import Downsample, ResnetBlock, SplitQKVAttnBlock, Upsample, decode_cpu_friendly, group_norm, swish


@dataclass(frozen=True)
class VQConfig:
    """Official ``ModelArgs`` names, plus the ``ch`` / ``num_res_blocks`` the official class hard-codes."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True  # the (unused at inference) ``quantize.codebook_used`` buffer exists
    encoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    ch: int = 128
    num_res_blocks: int = 2
    dropout_p: float = 0.0
    in_channels: int = 3
    image_size: int | None = None  # default resolution, for callers that need one

    def __post_init__(self) -> None:
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise InvalidInputError(f"encoder_ch_mult {self.encoder_ch_mult} and decoder_ch_mult "
                                    f"{self.decoder_ch_mult} must have the same number of levels")
        if self.codebook_size < 1 or self.codebook_embed_dim < 1:
            raise InvalidInputError("codebook_size and codebook_embed_dim must be positive")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    @classmethod
    def from_official(cls, model_args: dict[str, Any], encoder_decoder_kwargs: dict[str, Any] | None = None,
                      image_size: int | None = None) -> "VQConfig":
        """From the official ``ModelArgs`` dict (+ the Encoder/Decoder ``ch``/``num_res_blocks`` if changed)."""
        kw = dict(encoder_decoder_kwargs or {})
        return cls(codebook_size=int(model_args["codebook_size"]),
                   codebook_embed_dim=int(model_args["codebook_embed_dim"]),
                   codebook_l2_norm=bool(model_args.get("codebook_l2_norm", True)),
                   codebook_show_usage=bool(model_args.get("codebook_show_usage", True)),
                   encoder_ch_mult=tuple(model_args["encoder_ch_mult"]),
                   decoder_ch_mult=tuple(model_args["decoder_ch_mult"]),
                   z_channels=int(model_args["z_channels"]), dropout_p=float(model_args.get("dropout_p", 0.0)),
                   ch=int(kw.get("ch", 128)), num_res_blocks=int(kw.get("num_res_blocks", 2)),
                   in_channels=int(kw.get("in_channels", 3)), image_size=image_size)


PRESETS: dict[str, VQConfig] = {
    "vq_ds16_c2i": VQConfig(encoder_ch_mult=(1, 1, 2, 2, 4), decoder_ch_mult=(1, 1, 2, 2, 4)),
    "vq_ds8_c2i": VQConfig(encoder_ch_mult=(1, 2, 2, 4), decoder_ch_mult=(1, 2, 2, 4)),
    # the text-to-image release's VQ-16: the same architecture (sample_t2i.py builds VQ_models["VQ-16"]),
    # its own weights
    "vq_ds16_t2i": VQConfig(encoder_ch_mult=(1, 1, 2, 2, 4), decoder_ch_mult=(1, 1, 2, 2, 4)),
}

CODEBOOK_USED_LEN = 65536  # fixed length of the official usage ring buffer


class _Level(nn.Module):
    """One resolution level: ``res`` blocks, optional per-block ``attn``, optional resampling."""

    def __init__(self, channels_in: int, channels_out: int, n_blocks: int, attn: bool, dropout: float) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()
        for i in range(n_blocks):
            self.res.append(ResnetBlock(channels_in if i == 0 else channels_out, channels_out, dropout))
            if attn:
                self.attn.append(SplitQKVAttnBlock(channels_out))

    def blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, res in enumerate(self.res):
            h = res(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


def _mid(channels: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(channels, channels, dropout), SplitQKVAttnBlock(channels),
                          ResnetBlock(channels, channels, dropout)])


class VQEncoder(nn.Module):
    """Attention only at the lowest resolution; every level but the last halves the resolution."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        mult, ch = cfg.encoder_ch_mult, cfg.ch
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        self.conv_blocks = nn.ModuleList()
        c_in = ch
        for i, m in enumerate(mult):
            last = i == len(mult) - 1
            level = _Level(c_in, ch * m, cfg.num_res_blocks, attn=last, dropout=cfg.dropout_p)
            if not last:
                level.downsample = Downsample(ch * m)
            self.conv_blocks.append(level)
            c_in = ch * m
        self.mid = _mid(c_in, cfg.dropout_p)
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.conv_blocks:
            h = level.blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))  # (B, z, h, w)


class VQDecoder(nn.Module):
    """Mirror of the encoder: ``conv_blocks[0]`` is the lowest resolution (with attention)."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        mult, ch = cfg.decoder_ch_mult, cfg.ch
        c_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, 1, 1)
        self.mid = _mid(c_in, cfg.dropout_p)
        self.conv_blocks = nn.ModuleList()
        for j, m in enumerate(reversed(mult)):
            level = _Level(c_in, ch * m, cfg.num_res_blocks + 1, attn=j == 0, dropout=cfg.dropout_p)
            if j != len(mult) - 1:
                level.upsample = Upsample(ch * m)
            self.conv_blocks.append(level)
            c_in = ch * m
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)  # (B, C, h, w)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level.blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))  # (B, 3, H, W)


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.l2_norm = cfg.codebook_l2_norm
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_embed_dim)
        if cfg.codebook_show_usage:  # kept only so official checkpoints load strictly
            self.register_buffer("codebook_used", torch.zeros(CODEBOOK_USED_LEN))

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight  # (N, E)
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code of each latent vector: (B, E, h, w) -> (z_q (B, E, h, w), codes (B, h, w))."""
        B, E, h, w = z.shape
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, E)  # (B*h*w, E)
        if self.l2_norm:
            z_flat = F.normalize(z_flat, p=2, dim=-1)
        book = self.codebook()  # (N, E)
        # squared distance written as the reference does, so near-ties resolve identically
        d = z_flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1) - 2 * (z_flat @ book.t())  # (B*h*w, N)
        codes = d.argmin(dim=1)  # (B*h*w,) first index on ties
        z_q = z_flat + (book[codes] - z_flat)  # straight-through form, as the reference returns
        return z_q.view(B, h, w, E).permute(0, 3, 1, 2).contiguous(), codes.view(B, h, w)

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, E, h, w) normalised codebook rows."""
        return self.codebook()[codes].permute(0, 3, 1, 2).contiguous()


class VQTokenizer(nn.Module):
    """Image <-> a single ``g x g`` token grid (raster order = row-major)."""

    OPTIONAL_STATE_KEYS = ("quantize.codebook_used",)

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = VQEncoder(config)
        self.decoder = VQDecoder(config)
        self.quantize = VectorQuantizer(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)

    @classmethod
    def remap_state_dict(cls, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(sd)  # the official layout is ours

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    # ---- validation -------------------------------------------------------------------------
    def grid_shapes_for(self, image_size: int | Sequence[int]) -> list[tuple[int, int]]:
        """Token grid for an image size (int = square, or (H, W)); one grid for this tokenizer."""
        H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        f = self.downsample
        if H <= 0 or W <= 0 or H % f or W % f:
            raise InvalidInputError(f"image size {H}x{W} is not allowed: height and width must be positive "
                                    f"multiples of the tokenizer's downsample factor {f}")
        return [(H // f, W // f)]

    def _check_image(self, img: torch.Tensor) -> None:
        if not isinstance(img, torch.Tensor) or img.ndim != 4:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise InvalidInputError(f"image must be a [B, 3, H, W] tensor, got {shape}")
        if img.shape[1] != self.config.in_channels:
            raise InvalidInputError(f"image must have {self.config.in_channels} channels ([B, 3, H, W]), "
                                    f"got shape {tuple(img.shape)}")
        if not img.is_floating_point():
            raise InvalidInputError(f"image must be a float tensor in [-1, 1], got {img.dtype}")
        self.grid_shapes_for((img.shape[2], img.shape[3]))
        if not torch.isfinite(img).all():
            raise InvalidInputError(f"image {tuple(img.shape)} contains NaN or infinite values")

    def _check_codes(self, codes: torch.Tensor) -> None:
        if not isinstance(codes, torch.Tensor) or codes.ndim != 3 or codes.is_floating_point():
            shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise InvalidInputError(f"token grid must be an integer (B, h, w) tensor, got {shape}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise InvalidInputError(f"token ids must be in [0, {self.codebook_size}), got range "
                                    f"[{int(codes.min())}, {int(codes.max())}]")

    # ---- official-named helpers (parity) ------------------------------------------------------
    def _param_dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    def encode_prequant(self, img: torch.Tensor) -> torch.Tensor:
        """``quant_conv(encoder(img))``: (B, 3, H, W) -> (B, E, h, w), not normalised."""
        self._check_image(img)
        return self.quant_conv(self.encoder(img.to(self._param_dtype())))

    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image -> (quantised latent (B, E, h, w), codes (B, h, w))."""
        return self.quantize.quantize(self.encode_prequant(img))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Latent (B, E, h, w) -> image (B, 3, H, W), not clamped."""
        return decode_cpu_friendly(self.decoder, self.post_quant_conv(quant))

    def decode_code(self, indices: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Official signature: flat or gridded indices and ``shape = (B, E, h, w)``; not clamped."""
        B, E, h, w = (int(s) for s in shape)
        if indices.numel() != B * h * w or E != self.config.codebook_embed_dim:
            raise InvalidInputError(f"decode_code: {indices.numel()} indices do not fit shape {tuple(shape)} "
                                    f"(embed dim {self.config.codebook_embed_dim})")
        codes = indices.reshape(B, h, w).long()  # (B, h, w)
        self._check_codes(codes)
        return self.decode(self.quantize.codes_to_latent(codes))

    # ---- family-agnostic API (the nodes use these) --------------------------------------------
    @torch.no_grad()
    def encode_grids(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Image [B, 3, H, W] in [-1, 1] -> [codes (B, h, w) int64]."""
        return [self.encode(img)[1]]

    @torch.no_grad()
    def decode_grids(self, grids: Sequence[torch.Tensor], upto: int | None = None) -> torch.Tensor:
        """[codes (B, h, w)] -> image [B, 3, H, W] clamped to [-1, 1]. ``upto`` must be None or 1."""
        if len(grids) != 1 or (upto is not None and upto != 1):
            raise InvalidInputError(f"this tokenizer uses one token grid; got {len(grids)} grids (upto={upto})")
        codes = grids[0]
        self._check_codes(codes)
        latent = self.quantize.codes_to_latent(codes.long().to(self.quant_conv.weight.device))
        return self.decode(latent).clamp(-1.0, 1.0).float()
