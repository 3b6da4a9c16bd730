"""Control adapters: a control map -> condition tokens added inside the generator (DESIGN.md section 3).

Table-driven like the model loader: an adapter ``kind`` names a module, its adapter class and
config class. ``var-cnn`` is arnodes' CAR-style adapter for next-scale models (the bundled
emoji model's); ``controlar`` is ControlAR's branch for LlamaGen, in the official layout, with a
ViT encoder (the class-to-image checkpoints) or DINOv2 through transformers (the text-to-image ones).
Importing this package loads no model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidInputError
from ..kinds import config_from_json, kind_classes

ADAPTER_KINDS: dict[str, tuple[str, str, str]] = {
    "var-cnn": (".var_cnn", "VARControlAdapter", "VARControlConfig"),
    "controlar": (".controlar", "ControlARAdapter", "ControlARConfig"),
}


def adapter_classes(kind: str) -> tuple[type, type]:
    return kind_classes(ADAPTER_KINDS, kind, __package__, "control adapter")


def adapter_config(kind: str, data: dict[str, Any]):
    """A config from its JSON form (lists become tuples, nested dataclasses are built by the config)."""
    return config_from_json(adapter_classes(kind)[1], data, f"{kind} control")


def build_adapter(kind: str, config, state_dict: dict[str, torch.Tensor] | None, source: str,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Build on meta and load strictly (after the kind's ``remap_state_dict``); None: fresh weights."""
    from ..checkpoint import build_on_meta, load_into

    adapter_cls, _ = adapter_classes(kind)
    if state_dict is None:
        module = adapter_cls(config)
    else:
        module = build_on_meta(lambda: adapter_cls(config))
        sd = module.remap_state_dict(state_dict) if hasattr(module, "remap_state_dict") else state_dict
        load_into(module, sd, source)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


@dataclass(frozen=True)
class Preprocessor:
    """How a source image becomes this adapter's control map (the map itself: ``none``)."""

    type: str = "none"  # "canny" | "none"
    low_threshold: float = 0.4
    high_threshold: float = 0.8


def load_controls(entries: Any, base_dir, source: str, device: torch.device | str = "cpu") -> dict[str, "ControlAdapter"]:
    """A manifest's "controls": name -> {kind, file, config, preprocessor}; each adapter loaded strictly."""
    from pathlib import Path

    from ..checkpoint import read_checkpoint, unwrap_state_dict
    from ..errors import CheckpointError

    if entries in (None, {}):
        return {}
    if not isinstance(entries, dict):
        raise CheckpointError(f"{source}: 'controls' must be an object name -> adapter")
    out: dict[str, ControlAdapter] = {}
    for name, entry in entries.items():
        try:
            kind, file, config = entry["kind"], entry["file"], entry["config"]
            pre = Preprocessor(**entry.get("preprocessor", {}))
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{source}: control {name!r} needs kind, file, config and a valid preprocessor "
                                  f"({type(e).__name__}: {e})") from None
        path = Path(base_dir) / file
        sd = unwrap_state_dict(read_checkpoint(path), source=str(path))
        module = build_adapter(kind, adapter_config(kind, config), sd, str(path), device)
        out[str(name)] = ControlAdapter(str(name), module, pre)
    return out


@dataclass
class ControlAdapter:
    """A loaded adapter, as a bundle carries it: the module plus how to make its maps."""

    name: str  # e.g. "canny"
    module: torch.nn.Module
    preprocessor: Preprocessor

    def check_generator(self, generator: torch.nn.Module) -> None:
        self.module.check_generator(generator)


@dataclass
class ControlCondition:
    """What AR_COND carries for control: which adapter (loaded, or the name of one the model's bundle
    ships, resolved at generation), the control maps (B or 1, 3, H, W) in [-1, 1] (already
    preprocessed) and how strongly the condition is added (0 = uncontrolled)."""

    adapter: ControlAdapter | str
    maps: torch.Tensor
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.strength) <= 2.0:
            raise InvalidInputError(f"control strength must be in [0, 2], got {self.strength}")
        if self.maps.ndim != 4 or self.maps.shape[1] != 3:
            raise InvalidInputError(f"control maps must be [B, 3, H, W], got {tuple(self.maps.shape)}")

    def repeat(self, n: int) -> "ControlCondition":
        return ControlCondition(self.adapter, self.maps.repeat_interleave(n, dim=0), self.strength)

    def resolved(self, bundle) -> "ControlCondition":
        """With the adapter named by a string looked up in ``bundle`` (its manifest's "controls")."""
        if isinstance(self.adapter, ControlAdapter):
            return self
        return ControlCondition(bundle.control(self.adapter), self.maps, self.strength)

    def signal(self, generator: torch.nn.Module, batch: int, guided: bool):
        """The ControlSignal for a (B or doubled 2B) batch, or None at strength 0 (plain generation)."""
        if self.strength == 0.0:
            return None
        if not isinstance(self.adapter, ControlAdapter):
            raise InvalidInputError(f"control adapter {self.adapter!r} is not loaded (resolve it with the model)")
        self.adapter.check_generator(generator)
        maps = self.maps
        if maps.shape[0] == 1 and batch > 1:
            maps = maps.expand(batch, -1, -1, -1)
        if maps.shape[0] != batch:
            raise InvalidInputError(f"{maps.shape[0]} control maps for {batch} images; give one per image or one")
        module = self.adapter.module
        param = next(module.parameters())
        sig = module(maps.to(device=param.device, dtype=param.dtype))
        return sig.scaled(float(self.strength)).with_null_rows(guided)
