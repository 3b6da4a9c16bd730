"""Write the bundled model: safetensors state dicts, the class list and the JSON manifest."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

MANIFEST = "emoji.json"
TOKENIZER_FILE = "emoji_msvq.safetensors"
GENERATOR_FILE = "emoji_var.safetensors"
CLASSES_FILE = "emoji_classes.json"
DEFAULTS = {"cfg": 3.0, "top_k": 0, "top_p": 0.0}


def _state(module: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Contiguous, unshared copies (safetensors refuses aliased storage); floats cast to ``dtype``."""
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous().clone()
            for k, v in module.state_dict().items()}


def _jsonable(cfg: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


@dataclasses.dataclass(frozen=True)
class BundleLayout:
    """What a bundled model is called and which files hold it (one manifest per model in ``weights/``)."""

    name: str = "emoji-var"
    family: str = "var"
    tokenizer_kind: str = "msvq"
    generator_kind: str = "var"
    manifest: str = MANIFEST
    tokenizer_file: str = TOKENIZER_FILE
    generator_file: str = GENERATOR_FILE
    classes_file: str = CLASSES_FILE


def export_weights(out: Path, tok: nn.Module, var: nn.Module, classes: list[dict], *,
                   defaults: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                   var_dtype: torch.dtype = torch.float32, styles: list[str] | None = None,
                   layout: BundleLayout = BundleLayout(), extra: dict[str, Any] | None = None) -> Path:
    """Write the four files of the bundle into ``out``; returns the manifest path. ``extra``: manifest
    entries another step owns (a re-export keeps the bundle's control adapters)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file(_state(tok, torch.float32), str(out / layout.tokenizer_file), metadata={"format": "pt"})
    save_file(_state(var, var_dtype), str(out / layout.generator_file), metadata={"format": "pt"})
    rows = [{k: c[k] for k in ("name", "emoji", "group", "keywords") if k in c} for c in classes]
    (out / layout.classes_file).write_text(json.dumps(rows, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    gen_cfg = var.cfg if hasattr(var, "cfg") else var.config
    manifest: dict[str, Any] = {
        "name": layout.name,
        "family": layout.family,
        "image_size": int(tok.cfg.image_size),
        "tokenizer": {"kind": layout.tokenizer_kind, "file": layout.tokenizer_file, "config": _jsonable(tok.cfg)},
        "generator": {"kind": layout.generator_kind, "file": layout.generator_file, "config": _jsonable(gen_cfg)},
        "classes": layout.classes_file,
        "defaults": dict(defaults or DEFAULTS),
    }
    if styles:
        manifest["styles"] = list(styles)
    if meta:
        manifest["training"] = meta
    manifest.update(extra or {})
    path = out / layout.manifest
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_draft_store(out: Path, file: str, tokens: torch.Tensor, labels: torch.Tensor | None,
                      vocab_size: int) -> dict:
    """Save a raster model's draft store (engine/generate/draft_store.py) as ``out / file``, with the
    grids' class ids for a class model (None for a text model); returns the manifest's "draft_store" entry."""
    dtype = torch.int16 if vocab_size <= 2 ** 15 else torch.int32
    tensors = {"tokens": tokens.to(dtype).contiguous()}
    if labels is not None:
        tensors["labels"] = labels.to(torch.int32).contiguous()
    save_file(tensors, str(out / file), metadata={"format": "pt"})
    return {"file": file, "grids": int(tokens.shape[0]),
            "source": "the generator's training grids (its tokenizer, its training images)"}


def set_defaults(manifest: Path, defaults: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
    """Update the manifest's sampling defaults (and record evaluation metrics) in place."""
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["defaults"] = defaults
    if metrics is not None:
        data["metrics"] = metrics
    manifest.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_bundle(weights: Path, manifest_name: str = MANIFEST) -> tuple[Any, dict[str, Any], list[dict]]:
    """(loaded bundle, manifest dict, class rows) of an exported bundle folder: what every stage that
    continues from an export starts with. A text model's manifest names no class list; its training
    data is labelled with the bundled one."""
    from ..engine.loader import load_manifest

    manifest = json.loads((weights / manifest_name).read_text(encoding="utf-8"))
    classes = json.loads((weights / manifest.get("classes", CLASSES_FILE)).read_text(encoding="utf-8"))
    return load_manifest(weights / manifest_name), manifest, classes


@dataclasses.dataclass
class Stage:
    """What a stage that continues an exported bundle starts from."""

    log: Any  # (str) -> None, to stderr
    weights: Path
    bundle: Any
    manifest: dict[str, Any]
    classes: list[dict]
    data: Any  # data.EmojiData


def open_stage(weights: str | Path, data_cache: str | Path, threads: int) -> Stage:
    """Threads set, the bundle in ``weights`` read (:func:`read_bundle`) and the emoji data set loaded."""
    import sys

    from . import data as emoji_data

    torch.set_num_threads(threads)

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)
    weights = Path(weights)
    bundle, manifest, classes = read_bundle(weights)
    d = emoji_data.load_for_manifest(data_cache, manifest, log=log)
    return Stage(log, weights, bundle, manifest, classes, d)

