"""Inside ComfyUI, ComfyUI's model management owns the memory of our models.

Each loaded (model, dtype, quant, device) is a ``comfy.model_patcher.ModelPatcher`` around the
bundle's modules, and before a node uses it ``comfy.model_management.load_models_gpu`` puts it
on its device, with the node's working set (KV cache, activations) as the memory it must leave
free. So ComfyUI's "free memory" / unload button, ``--cpu``, ``--highvram`` and its eviction of
other models apply to ours as to its own, and "auto" is the device ComfyUI chose. Our own model
cache (``engine/model_cache.py``) is not used inside ComfyUI.

A model lives as long as ComfyUI keeps the loader node's output: the AR_MODEL handle holds it, so
when ComfyUI drops its node cache the weights go too. Loads are always full
(``force_full_load``): our layers are plain torch modules, which ComfyUI's partial (lowvram)
loading cannot split between devices; under ``--lowvram`` ComfyUI still unloads its other
models first to make room.
"""
from __future__ import annotations

import importlib
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..engine.loader import ModelBundle, load_bundle
from ..engine.memory import working_set
from ..engine.model_cache import parse_dtype
from .types import ModelHandle, resolve_device


class BundleModules(nn.Module):
    """The bundle's modules under one root, so the patcher measures and moves them together."""

    def __init__(self, bundle: ModelBundle) -> None:
        super().__init__()
        self.tokenizer = bundle.tokenizer
        self.generator = bundle.generator
        self.controls = nn.ModuleDict({name: c.module for name, c in bundle.controls.items()})
        self.text_encoder = bundle.text_encoder.module if bundle.text_encoder is not None else None
        self._dtype = bundle.dtype

    def get_dtype(self) -> torch.dtype:  # ComfyUI asks a patched model for its dtype
        return self._dtype


@dataclass
class LoadedModel:
    """What an AR_MODEL handle keeps alive inside ComfyUI."""

    bundle: ModelBundle
    patcher: Any


class ComfyModels:
    """The pack's model host inside ComfyUI (``ModelHandle.host``)."""

    def __init__(self, mm: Any, patcher_class: type) -> None:
        self.mm = mm
        self.patcher_class = patcher_class
        self._lock = threading.Lock()
        # shared while any handle holds it: two loader nodes for one model use one copy
        self._loaded: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def resolve_device(self, device: str) -> str:
        """"auto" is the device ComfyUI chose (``--cpu`` included); an explicit choice is kept."""
        return str(self.mm.get_torch_device()) if device == "auto" else resolve_device(device)

    def load(self, handle: ModelHandle) -> LoadedModel:
        """The model in host memory (ComfyUI's offload device), wrapped for ComfyUI, kept by the handle;
        not yet on its device."""
        return handle.kept(lambda: self._load(handle))

    def _load(self, handle: ModelHandle) -> LoadedModel:
        key = (handle.name, handle.dtype, handle.quant, handle.device, handle.models_dir)
        with self._lock:
            found = self._loaded.get(key)
            if found is not None:
                return found
            offload = self.mm.unet_offload_device()
            bundle = load_bundle(handle.name, device=offload, dtype=parse_dtype(handle.dtype),
                                 models_dir=handle.models_dir, quant=handle.quant)
            patcher = self.patcher_class(BundleModules(bundle), load_device=torch.device(handle.device),
                                         offload_device=offload, size=bundle.resident_bytes())
            loaded = LoadedModel(bundle, patcher)
            self._loaded[key] = loaded
            return loaded

    def _on_device(self, loaded: LoadedModel, images: int) -> None:
        """ComfyUI puts the model on its device, freeing other models until the weights and a
        generation of ``images`` images fit."""
        self.mm.load_models_gpu([loaded.patcher], memory_required=working_set(loaded.bundle, images).total,
                                force_full_load=True)

    @contextmanager
    def use(self, handle: ModelHandle, images: int = 0, what: str = "") -> Iterator[ModelBundle]:
        loaded = self.load(handle)
        with loaded.bundle.generation_lock:
            self._on_device(loaded, images)
            try:
                yield loaded.bundle
            finally:
                loaded.patcher.size = loaded.bundle.resident_bytes()  # the KV caches it keeps count too

    @contextmanager
    def pinned(self, handle: ModelHandle, what: str = "") -> Iterator[tuple[ModelBundle, Callable[[int], Any]]]:
        loaded = self.load(handle)
        self._on_device(loaded, 0)

        @contextmanager
        def reserve(images: int) -> Iterator[None]:
            self._on_device(loaded, images)
            try:
                yield
            finally:
                loaded.patcher.size = loaded.bundle.resident_bytes()
        yield loaded.bundle, reserve


_HOSTS: dict[int, ComfyModels] = {}


def comfy_models(mm: Any) -> ComfyModels:
    """The host for this ComfyUI process (one per ``comfy.model_management`` module)."""
    host = _HOSTS.get(id(mm))
    if host is None or host.mm is not mm:
        patcher = importlib.import_module("comfy.model_patcher").ModelPatcher
        host = _HOSTS[id(mm)] = ComfyModels(mm, patcher)
    return host
