"""Rebuild the bundled raster model's draft store: the token grids its GPT was trained on, which
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

import torch

from . import data as emoji_data
from .export import MANIFEST, read_bundle, write_draft_store
from .raster import DRAFT_STORE_FILE, LAYOUT, training_grids


def main(argv: list[str] | None = None) -> None:
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
    manifest["draft_store"] = write_draft_store(weights, DRAFT_STORE_FILE, tokens, labels,
                                                bundle.generator.config.vocab_size)
    (weights / LAYOUT.manifest).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"wrote {tokens.shape[0]} grids to {weights / DRAFT_STORE_FILE}")


if __name__ == "__main__":
    main()
