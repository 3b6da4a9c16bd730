"""Rebuild a bundled raster model's draft store: the token grids its GPT was trained on, which
speculative decoding copies drafts from (engine/generate/draft_store.py).

    python -m arnodes.training.draft_store --weights weights                             # emoji-raster
    python -m arnodes.training.draft_store --weights weights --manifest emoji_text.json  # emoji-text

``raster.py`` and ``text_model.py`` write the store with every export; this rebuilds it for an exported
bundle from the same data set, tokenizer and image selection (deterministic: the same files give the
same grids). A class model's grids carry their class ids; a text model's carry none (its drafts are
matched on tokens alone).
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
from .text_model import DRAFT_STORE_FILE as TEXT_DRAFT_STORE_FILE, MANIFEST as TEXT_MANIFEST

STORE_FILES = {LAYOUT.manifest: DRAFT_STORE_FILE, TEXT_MANIFEST: TEXT_DRAFT_STORE_FILE}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="write a raster model's draft store from its training grids")
    p.add_argument("--weights", default=str(Path(__file__).resolve().parent.parent / "weights"))
    p.add_argument("--manifest", default=LAYOUT.manifest, choices=sorted(STORE_FILES))
    p.add_argument("--data-cache", default=str(emoji_data.DEFAULT_CACHE))
    a = p.parse_args(argv)
    weights = Path(a.weights)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    bundle, manifest, classes = read_bundle(weights, a.manifest)
    # the data a model trained on: a text model records its sets; the class models read emoji-var's
    data_info = manifest if bundle.takes_text else json.loads((weights / MANIFEST).read_text(encoding="utf-8"))
    d = emoji_data.load_for_manifest(a.data_cache, data_info, log=log)
    _, tokens, labels = training_grids(bundle.tokenizer, d, classes, torch.device("cpu"))
    file = STORE_FILES[a.manifest]
    manifest["draft_store"] = write_draft_store(weights, file, tokens, None if bundle.takes_text else labels,
                                                bundle.generator.config.vocab_size)
    (weights / a.manifest).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"wrote {tokens.shape[0]} grids to {weights / file}")


if __name__ == "__main__":
    main()
