"""DINOv2 as a ControlAR control encoder (the text-to-image adapters' encoder), through ``transformers``.

ControlAR's text-to-image checkpoints embed a fine-tuned DINOv2 (small or base) as ``adapter.model``:
the control map, drawn at 16 px per image token, is resized to 14 px per token (DINOv2's patch),
nearest for binary maps (canny, segmentation) and bicubic for continuous ones (depth, HED,
lineart), and the patch tokens of the last hidden state (after the final layer norm, the CLS
token dropped) are the condition. The weights come from the adapter checkpoint, so nothing is
downloaded; ``transformers`` is needed only when such an adapter is built, and its absence is
one clear error. Released files use transformers 4.x key names; transformers 5 renamed the
attention projections, so both spellings load (``remap_keys``, applied by the adapter's
``remap_state_dict`` before the strict check).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError, UnsupportedError

RESIZE_MODES = ("nearest", "bicubic")
# transformers 4.x (released checkpoints) -> 5.x attention parameter names, inside encoder.layer.N.
_RENAMED = {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
            "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}


@dataclass(frozen=True)
class DINOv2Config:
    """The fields of transformers' ``Dinov2Config`` that shape the forward (dinov2-small by default)."""

    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    mlp_ratio: int = 4
    image_size: int = 518  # the position grid the weights were trained at (37 x 37 patches)
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    layerscale_value: float = 1.0
    pixels_per_token: int = 16  # the map is drawn at this many pixels per image token, then resized
    resize: str = "nearest"  # canny / segmentation maps; "bicubic" for depth, HED, lineart

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise InvalidInputError(f"DINOv2 resize {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.hidden_size % self.num_attention_heads:
            raise InvalidInputError(f"DINOv2 hidden_size {self.hidden_size} must divide into "
                                    f"{self.num_attention_heads} heads")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UnsupportedError("the DINOv2 control encoder (ControlAR's text-to-image adapters) needs the "
                               "'transformers' package: pip install transformers") from None
    return transformers


class DINOv2Encoder(nn.Module):
    """Control map (B, C, H, W) at ``pixels_per_token`` px per token -> patch tokens (B, tokens, D)."""

    def __init__(self, cfg: DINOv2Config) -> None:
        super().__init__()
        self.cfg = cfg
        hf = _transformers()
        model = hf.Dinov2Model(hf.Dinov2Config(
            hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads, mlp_ratio=cfg.mlp_ratio, image_size=cfg.image_size,
            patch_size=cfg.patch_size, layer_norm_eps=cfg.layer_norm_eps, layerscale_value=cfg.layerscale_value))
        # transformers' model runs the forward; its parts are registered here at the top level, so the
        # keys are the released ones (adapter.model.embeddings..., not adapter.model.model...)
        object.__setattr__(self, "_dinov2", model.eval())
        self.embeddings, self.encoder, self.layernorm = model.embeddings, model.encoder, model.layernorm

    @property
    def out_dim(self) -> int:
        return self.cfg.hidden_size

    @property
    def pixels_per_token(self) -> int:
        return self.cfg.pixels_per_token

    def remap_keys(self, sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """Rename attention keys to the layout of the installed transformers (4.x <-> 5.x)."""
        mine = set(self.state_dict())
        out = {}
        for key, value in sd.items():
            local = key[len(prefix):] if key.startswith(prefix) else None
            if local is not None and local not in mine:
                for old, new in _RENAMED.items():
                    for a, b in ((old, new), (new, old)):
                        if a in local and local.replace(a, b) in mine:
                            key = prefix + local.replace(a, b)
            out[key] = value
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        per = self.cfg.pixels_per_token
        size = ((h // per) * self.cfg.patch_size, (w // per) * self.cfg.patch_size)
        if self.cfg.resize == "nearest":
            x = F.interpolate(x, size=size, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=True)
        return self._dinov2(pixel_values=x).last_hidden_state[:, 1:]
