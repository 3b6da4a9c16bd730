"""The text encoder a loaded model carries: a manifest's (or registry entry's) "text_encoder" entry
-> a :class:`PromptEncoder`.

Table-driven like the model loader: the entry's ``kind`` names a module that provides

- ``from_entry(entry, base_dir, models_dir, offline, device, dtype)``: the kind's encoder, anything
  with ``encode(prompts) -> (features (B, T, C), right-padded mask (B, T))``, ``dim``, ``module`` (the
  ``nn.Module`` holding its weights, so caches can measure and move it) and ``to(device, dtype)``;
- optionally ``present(entry, models_dir) -> bool`` and ``fetch_hint(entry, models_dir) -> str`` for
  entries that name a released encoder (whether its files are on disk, and how to get them).

Today ``t5`` (transformers' T5, the released LlamaGen t2i models' flan-t5-xl); a model that ships
its own small encoder adds one module and one row to :data:`TEXT_ENCODER_KINDS`.

What every kind shares lives in :class:`PromptEncoder`: the generator's caption padding (left, as
LlamaGen t2i was trained) and a cache of encoded prompts, so a re-run with a new seed, or a second
node with the same prompt, does not run the encoder again.
"""
from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..conditioning import TextCondition
from ..errors import CheckpointError, InvalidInputError
from .captions import caption_condition

# kind -> module (relative to engine.text) providing from_entry (and optionally present / fetch_hint)
TEXT_ENCODER_KINDS: dict[str, str] = {
    "t5": ".t5",
}
SHARED_FIELDS = ("kind", "left_padding")  # read here; the rest of an entry belongs to its kind
CACHE_PROMPTS = 64  # encoded prompts a model remembers (T5-XL: 1 MB each in float32)


def _kind_module(entry: Any, source: str):
    if not isinstance(entry, Mapping) or not isinstance(entry.get("kind"), str):
        raise CheckpointError(f"{source}: 'text_encoder' must be an object with a 'kind' "
                              f"(one of {sorted(TEXT_ENCODER_KINDS)})")
    kind = entry["kind"]
    if kind not in TEXT_ENCODER_KINDS:
        raise CheckpointError(f"{source}: unknown text encoder kind {kind!r}; known: {sorted(TEXT_ENCODER_KINDS)}")
    return importlib.import_module(TEXT_ENCODER_KINDS[kind], __package__)


def _kind_fields(entry: Mapping) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in SHARED_FIELDS}


def encoder_dtype(generator_dtype: torch.dtype) -> torch.dtype:
    """The encoder runs in bfloat16 beside a bfloat16 generator (as the official t2i sampler does),
    else in float32: T5's activations overflow float16."""
    return torch.bfloat16 if generator_dtype == torch.bfloat16 else torch.float32


def load_prompt_encoder(entry: Any, base_dir: str | Path | None, source: str, device: torch.device | str = "cpu",
                        generator_dtype: torch.dtype = torch.float32, models_dir: str | Path | None = None,
                        offline: bool | None = None) -> "PromptEncoder | None":
    """The entry's encoder, loaded (None for no entry). File names in it are relative to ``base_dir``."""
    if entry is None:
        return None
    module = _kind_module(entry, source)
    left = entry.get("left_padding", True)
    if not isinstance(left, bool):
        raise CheckpointError(f"{source}: text_encoder 'left_padding' must be true or false, got {left!r}")
    encoder = module.from_entry(_kind_fields(entry), None if base_dir is None else Path(base_dir), models_dir,
                                offline, device, encoder_dtype(generator_dtype), source)
    return PromptEncoder(encoder, str(entry["kind"]), left_padding=left)


def encoder_present(entry: Any, models_dir: str | Path | None = None) -> bool:
    """Whether the entry's files are on disk (never touches the network); kinds without a check: True."""
    module = _kind_module(entry, "text_encoder")
    check = getattr(module, "present", None)
    return True if check is None else bool(check(_kind_fields(entry), models_dir))


def fetch_hint(entry: Any, models_dir: str | Path | None = None) -> str:
    """How to get the entry's files (empty when the kind ships them with the model)."""
    module = _kind_module(entry, "text_encoder")
    hint = getattr(module, "fetch_hint", None)
    return "" if hint is None else str(hint(_kind_fields(entry), models_dir))


class PromptEncoder:
    """A loaded model's text encoder: prompts -> the TextCondition its generator takes.

    Each prompt is encoded alone and remembered (LRU, :data:`CACHE_PROMPTS`), as CPU tensors already
    padded the generator's way. Alone, because batching prompts can change the encoder's float
    results in the last bits: a prompt then gives the same features whether it came from the cache,
    from a batch, or from a fresh process replaying a saved workflow. ``encoded`` counts the prompts
    that actually ran through the encoder.
    """

    def __init__(self, encoder: Any, kind: str, left_padding: bool = True, cache_size: int = CACHE_PROMPTS) -> None:
        self.encoder, self.kind, self.left_padding, self.cache_size = encoder, kind, left_padding, cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    @property
    def module(self) -> torch.nn.Module:
        return self.encoder.module

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "PromptEncoder":
        self.encoder.to(device, dtype)
        return self

    def _rows(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond (1, T, C), mask (1, T)) of one prompt on the CPU; from the cache when it was encoded before."""
        hit = self._cache.get(prompt)
        if hit is not None:
            self._cache.move_to_end(prompt)
            return hit
        with torch.no_grad():
            cond, mask = caption_condition(*self.encoder.encode([prompt]), left_padding=self.left_padding)
        self.encoded += 1
        rows = (cond.detach().cpu(), mask.detach().cpu())
        self._cache[prompt] = rows
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return rows

    def features(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond (B, T, C), mask (B, T)) for the prompts, on the CPU."""
        if not prompts:
            raise InvalidInputError("no prompt to encode")
        with self._lock:
            rows = [self._rows(str(p)) for p in prompts]
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    def encode(self, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None) -> TextCondition:
        """One prompt per image; ``negative_prompts``: one per prompt, or None for the model's null caption."""
        prompts = [str(p) for p in prompts]
        cond, mask = self.features(prompts)
        neg = neg_mask = None
        if negative_prompts is not None:
            if len(negative_prompts) != len(prompts):
                raise InvalidInputError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts")
            neg, neg_mask = self.features([str(p) for p in negative_prompts])
        return TextCondition(cond, mask, neg, neg_mask, tuple(prompts))

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
