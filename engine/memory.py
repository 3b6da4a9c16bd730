"""What a request needs and what a device offers: the numbers behind the model cache's budget.

A GPU user runs out of device memory, not host RAM, and what runs out is rarely the weights
alone: a generation's KV cache grows with the batch and the sequence, and at batch 16 it can
outweigh the model. So the cache's budget is the device's own memory (``torch.cuda.mem_get_info``
on CUDA, physical RAM on the CPU), and every generation reserves its estimated working set in
that budget before it allocates anything (``ModelCache.reserve``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .kv_cache import decode_cache_dtype, raster_cache_length
from .limits import cgroup_memory

DEVICE_FRACTION = 0.9  # of a GPU's memory the cache may plan for; the rest is the allocator's slack
HOST_FRACTION = 0.5  # of physical RAM: the host also runs the OS, the UI, the data a request reads


@dataclass(frozen=True)
class WorkingSet:
    """A generation's estimated memory beyond the weights, by part (bytes). An estimate for
    planning and refusing, not a measurement."""

    kv_cache: int = 0
    activations: int = 0
    logits: int = 0

    @property
    def total(self) -> int:
        return self.kv_cache + self.activations + self.logits

    def describe(self) -> str:
        return (f"KV cache {gib(self.kv_cache)}, activations {gib(self.activations)}, "
                f"logits {gib(self.logits)}")


def working_set(bundle, batch: int) -> WorkingSet:
    """Generating ``batch`` images with ``bundle``: KV cache over every token, activations and
    logits, with CFG's doubled batch."""
    cfg = getattr(bundle.generator, "cfg", None) or getattr(bundle.generator, "config", None)
    layers = getattr(cfg, "depth", None) or getattr(cfg, "n_layer", None)
    dim = getattr(cfg, "embed_dim", None) or getattr(cfg, "dim", None)
    if not layers or not dim or batch < 1:
        return WorkingSet()
    if hasattr(cfg, "patch_nums"):  # next-scale: every scale's tokens; logits for the largest scale
        tokens, last = sum(p * p for p in cfg.patch_nums), cfg.patch_nums[-1] ** 2
    else:  # raster: the class token(s) plus the grid; logits one token at a time
        tokens, last = raster_cache_length(getattr(cfg, "block_size", 0) + getattr(cfg, "cls_token_num", 1)), 1
    rows = 2 * batch
    kv_dtype = bundle.dtype if hasattr(cfg, "patch_nums") else decode_cache_dtype(bundle.dtype, bundle.device)
    element = 4 if kv_dtype.is_floating_point and kv_dtype.itemsize >= 4 else 2
    return WorkingSet(kv_cache=2 * layers * rows * tokens * dim * element,
                      activations=16 * rows * tokens * dim * 4,
                      logits=rows * last * getattr(cfg, "vocab_size", 0) * 4 * 2)


def device_budget(device: str) -> int | None:
    """Bytes the model cache may plan for on ``device``: a fraction of the GPU's total memory, or of
    the host's RAM; None when the device cannot tell (unbounded)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        _, total = torch.cuda.mem_get_info(dev)
        return int(total * DEVICE_FRACTION)
    if dev.type == "cpu":
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
        container = cgroup_memory()  # a container's limit, when lower than the host's RAM
        return int(min(ram, container[0] if container else ram) * HOST_FRACTION)
    return None


def gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n < 2 ** 30 else f"{n / 2 ** 30:.1f} GiB"
