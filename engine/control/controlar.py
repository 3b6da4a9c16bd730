"""ControlAR's control branch for LlamaGen class-to-image models (Li et al. 2024), official layout.

A ViT encodes the control map into one token per image-token position (ViT patch grid = token
grid); two bias-free MLPs (``adapter_mlp``, ``condition_mlp.cap_proj``) bring it to the GPT's
width; before blocks 0, n/3 and 2n/3 a third MLP per injection (``condition_layers``) turns it
into what is added to the hidden state, position j of the sequence getting token j. The null
condition is zero, which the bias-free MLPs map to zero: the unconditional branch of guidance
is plain null-class LlamaGen.

The official file stores the GPT and this branch in one state dict; :func:`split_state_dict`
separates them. ``condition_embeddings``, ``condition_norm``, ``condition_mlp.uncond_embedding``
and the ViT pooler are in the released layout but never used by the class-to-image forward.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, InvalidInputError, UnsupportedError
from .signal import ControlSignal
from .dinov2 import DINOv2Config, DINOv2Encoder
from .vit import ViTConfig, ViTEncoder

CONTROL_PREFIXES = ("adapter.", "adapter_mlp.", "condition_")
UNUSED_KEYS = ("condition_embeddings.weight", "condition_norm.weight", "condition_mlp.uncond_embedding",
               "adapter.model.pooler.dense.weight", "adapter.model.pooler.dense.bias")
INJECTIONS = 3  # condition_layers: before blocks 0, n/3, 2n/3
ENCODERS: dict[str, tuple[type, type]] = {"vit": (ViTEncoder, ViTConfig), "dinov2": (DINOv2Encoder, DINOv2Config)}


@dataclass(frozen=True)
class ControlARConfig:
    dim: int  # the GPT's width
    n_layer: int
    block_size: int  # image tokens (grid * grid)
    encoder: str = "vit"
    encoder_config: Any = field(default_factory=ViTConfig)

    def __post_init__(self) -> None:
        if self.n_layer % INJECTIONS:
            raise InvalidInputError(f"ControlAR injects before every (n_layer // 3)-th block; n_layer {self.n_layer} "
                                    f"must be a multiple of 3")
        if self.encoder not in ENCODERS:
            raise InvalidInputError(f"unknown ControlAR encoder {self.encoder!r}; known: {sorted(ENCODERS)}")
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            raise InvalidInputError(f"block_size {self.block_size} must be a square")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ControlARConfig":
        data = dict(data)
        enc_cls = ENCODERS.get(data.get("encoder", "vit"), ENCODERS["vit"])[1]
        enc = data.get("encoder_config", {})
        if isinstance(enc, dict):
            names = {f.name for f in dataclasses.fields(enc_cls)}
            data["encoder_config"] = enc_cls(**{k: v for k, v in enc.items() if k in names})
        return cls(**data)

    @property
    def grid(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def injected_blocks(self) -> tuple[int, ...]:
        every = self.n_layer // INJECTIONS
        return tuple(range(0, self.n_layer, every))


class _MLP(nn.Module):
    """fc1 -> GELU(tanh) -> fc2, bias-free (so zero stays zero)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden, bias=False)
        self.fc2 = nn.Linear(d_hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class ControlARAdapter(nn.Module):
    family = "llamagen"

    def __init__(self, cfg: ControlARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc_cls, _ = ENCODERS[cfg.encoder]
        self.adapter = nn.Module()
        self.adapter.model = enc_cls(cfg.encoder_config)
        self.adapter_mlp = _MLP(self.adapter.model.out_dim, cfg.dim, cfg.dim)
        self.condition_mlp = nn.Module()
        self.condition_mlp.cap_proj = _MLP(cfg.dim, cfg.dim, cfg.dim)
        self.condition_layers = nn.ModuleList(_MLP(cfg.dim, cfg.dim, cfg.dim) for _ in range(INJECTIONS))

    def remap_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The branch's keys of an official (GPT + control) state dict, without the unused ones, in the
        encoder's key layout (DINOv2: the installed transformers' names)."""
        sd = {k: v for k, v in sd.items() if k.startswith(CONTROL_PREFIXES) and k not in UNUSED_KEYS}
        encoder = self.adapter.model
        return encoder.remap_keys(sd, "adapter.model.") if hasattr(encoder, "remap_keys") else sd

    def check_generator(self, generator: nn.Module) -> None:
        g = generator.config
        if getattr(g, "is_t2i", False):  # position j gets token j only with a single class position
            raise UnsupportedError("this ControlAR adapter is for class-to-image models; a text-to-image model's "
                                   "caption positions shift where the control tokens go, which is not supported yet")
        if (g.dim, g.n_layer, g.block_size) != (self.cfg.dim, self.cfg.n_layer, self.cfg.block_size):
            raise InvalidInputError(f"ControlAR adapter made for dim {self.cfg.dim}, {self.cfg.n_layer} layers, "
                                    f"{self.cfg.block_size} tokens; the model has {g.dim}, {g.n_layer}, {g.block_size}")

    def map_size(self) -> int:
        """The control map's side in pixels: the encoder's pixels per image token (ViT: its patch)."""
        return self.cfg.grid * self.adapter.model.pixels_per_token

    def condition_tokens(self, control: torch.Tensor) -> torch.Tensor:
        """control (B, 3, H, W) in [-1, 1] -> (B, L, dim): ``Transformer.condition_token`` of the official code."""
        size = self.map_size()
        if control.shape[-2:] != (size, size):
            control = F.interpolate(control, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.condition_mlp.cap_proj(self.adapter_mlp(self.adapter.model(control)))

    def forward(self, control: torch.Tensor) -> ControlSignal:
        c = self.condition_tokens(control)
        every = self.cfg.n_layer // INJECTIONS
        return ControlSignal({b: self.condition_layers[b // every](c) for b in self.cfg.injected_blocks})


def split_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """An official ControlAR checkpoint -> (GPT state dict, control-branch state dict)."""
    gpt = {k: v for k, v in sd.items() if not k.startswith(CONTROL_PREFIXES)}
    control = {k: v for k, v in sd.items() if k.startswith(CONTROL_PREFIXES)}
    if not control:
        raise CheckpointError("no ControlAR control branch in this checkpoint (no adapter.* / condition_* keys)")
    return gpt, control


def config_from_official(model_args: dict[str, Any], encoder_config: dict[str, Any],
                         encoder: str = "vit") -> ControlARConfig:
    """The branch's config from the official ``ModelArgs`` (as a dict) and the encoder's config."""
    if int(model_args.get("condition_token_num", 0)) != 0:
        raise InvalidInputError("ControlAR class-to-image checkpoints have condition_token_num 0; "
                                f"got {model_args.get('condition_token_num')}")
    return ControlARConfig.from_dict({"dim": int(model_args["dim"]), "n_layer": int(model_args["n_layer"]),
                                      "block_size": int(model_args["block_size"]), "encoder": encoder,
                                      "encoder_config": dict(encoder_config)})


def load_official(sd: dict[str, torch.Tensor], model_args: dict[str, Any], encoder_config: dict[str, Any],
                  source: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """An official ControlAR c2i state dict -> (LlamaGen generator, ControlARAdapter), both loaded strictly."""
    from ..loader import build_module
    from ..models.llamagen import LlamaGenConfig
    from . import build_adapter

    gpt_sd, control_sd = split_state_dict(sd)
    gpt = build_module("llamagen", LlamaGenConfig.from_official(model_args), gpt_sd, source, device, dtype)
    adapter = build_adapter("controlar", config_from_official(model_args, encoder_config), control_sd, source,
                            device, dtype)
    return gpt, adapter
