"""Write the bundled raster model's draft store: the token grids its GPT was trained on, which
speculative decoding copies drafts from (engine/generate/draft_store.py).

    python -m arnodes.training.draft_store --weights weights

``raster.py`` writes the store with every export; this rebuilds it for an exported bundle from the
same data set, tokenizer and image selection (deterministic: the same files give the same grids).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from . import data as emoji_data

STORE_FILE = "emoji_raster_drafts.safetensors"


def training_grids(tok, d: "emoji_data.EmojiData", classes: list[dict], device: torch.device
                   ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(image indices, raster tokens (N, L), class ids (N,)) of the generator's training images: the
    training split's images of the bundle's classes, tokenized by ``tok``."""
    from .raster import raster_tokens
    by_emoji = {c["emoji"]: i for i, c in enumerate(classes)}
    remap = np.array([by_emoji.get(c["emoji"], -1) for c in d.classes])
    idx = d.generator_train()
    idx = idx[remap[d.labels[idx]] >= 0]
    return idx, raster_tokens(tok, d.images[idx], device), torch.from_numpy(remap[d.labels[idx]])


def write_store(weights: Path, tokens: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> dict:
    """Save the grids next to the bundle; returns the manifest's "draft_store" entry."""
    dtype = torch.int16 if vocab_size <= 2 ** 15 else torch.int32
    save_file({"tokens": tokens.to(dtype).contiguous(), "labels": labels.to(torch.int32).contiguous()},
              str(weights / STORE_FILE), metadata={"format": "pt"})
    return {"file": STORE_FILE, "grids": int(tokens.shape[0]),
            "source": "the generator's training grids (its tokenizer, its training images)"}


def main(argv: list[str] | None = None) -> None:
    from .export import MANIFEST, read_bundle
    from .raster import LAYOUT
    p = argparse.ArgumentParser(description="write the raster model's draft store from its training grids")
    p.add_argument("--weights", default=str(Path(__file__).resolve().parent.parent / "weights"))
    p.add_argument("--data-cache", default=str(emoji_data.DEFAULT_CACHE))
    a = p.parse_args(argv)
    weights = Path(a.weights)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    bundle, manifest, classes = read_bundle(weights, LAYOUT.manifest)
    var_manifest = json.loads((weights / MANIFEST).read_text(encoding="utf-8"))
    d = emoji_data.load_for_manifest(a.data_cache, var_manifest, log=log)
    _, tokens, labels = training_grids(bundle.tokenizer, d, classes, torch.device("cpu"))
    manifest["draft_store"] = write_store(weights, tokens, labels, bundle.generator.config.vocab_size)
    (weights / LAYOUT.manifest).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"wrote {tokens.shape[0]} grids to {weights / STORE_FILE}")


if __name__ == "__main__":
    main()
