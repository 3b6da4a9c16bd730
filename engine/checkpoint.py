"""Checkpoint reading: safetensors first, pickles only through ``weights_only``.

Models are built on the meta device and receive their tensors with
``load_state_dict(assign=True)``, so a multi-GB model is never initialised twice.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Iterable, Mapping, TypeVar

import torch
from torch import nn

from .errors import CheckpointError, MissingFileError

M = TypeVar("M", bound=nn.Module)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_checkpoint(path: str | Path) -> object:
    """Read a checkpoint file into CPU tensors without executing arbitrary pickled code."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if suffix in PICKLE_SUFFIXES:
        try:
            return torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"{path}: refused to unpickle: the file holds Python objects other than tensors, which "
                f"weights_only loading does not allow ({str(e).splitlines()[0]}). Convert it to .safetensors "
                f"with a tool you trust.") from e
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({str(e).splitlines()[0]})") from e
    raise CheckpointError(f"{path}: unknown checkpoint format {suffix!r}; expected one of "
                          f"{SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES}")


def unwrap_state_dict(obj: object, nesting: Iterable[str] = ("model", "module", "state_dict"),
                      source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state_dict inside a training checkpoint (e.g. LlamaGen's ``ckpt["model"]``)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    for key in nesting:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    raise CheckpointError(f"{source}: no state_dict found (top-level keys: {sorted(map(str, obj))[:10]}; "
                          f"looked inside {list(nesting)})")


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                     optional: Iterable[str] = ()) -> None:
    """Raise one CheckpointError listing every missing, unexpected and misshaped key."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    optional = set(optional)
    missing = [k for k in expected if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [f"{k}: file {tuple(sd[k].shape)} vs model {expected[k]}"
                 for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshaped)):
        if items:
            more = f" ... and {len(items) - 8} more" if len(items) > 8 else ""
            problems.append(f"{label} ({len(items)}): {', '.join(items[:8])}{more}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))


def load_into(model: M, sd: Mapping[str, torch.Tensor], source: str, optional: Iterable[str] = ()) -> M:
    """Strictly load ``sd`` (after :func:`check_state_dict`) by assignment; meta-built models welcome."""
    check_state_dict(model, sd, source, optional)
    own = model.state_dict()
    full = dict(sd)
    for k in optional:  # keep the model's own value for optional buffers the file lacks
        if k not in full and k in own:
            full[k] = own[k] if own[k].device.type != "meta" else torch.zeros(own[k].shape, dtype=own[k].dtype)
    model.load_state_dict(full, strict=True, assign=True)
    return model


def build_on_meta(factory: Callable[[], M]) -> M:
    with torch.device("meta"):
        return factory()
