"""Forward passes (and wall time) of the raster decode strategies: plain, sjd, gsd.

Same model, classes, seeds and sampler for each strategy; ``forwards`` counts model forward passes per
image (plain: one per token). Speculative rows name their drafts: "above" (Jacobi re-drafts, new
positions from the token one row up) and, for a model that ships a draft store, "store" (drafts copied
from its grids, the default for such a model). Models: ``emoji-raster`` (the bundled trained raster
model, its own sampling defaults, a dozen classes; it ships a store of its training grids),
``fixture`` (the tiny parity LlamaGen) and ``gpt-b`` (GPT-B at 256 px with random weights: a random
model's drafts are rarely right, so it shows the floor of the gain, not what a trained model gets).

    python bench/decode_strategies.py --models emoji-raster fixture gpt-b --seeds 2 \
        --out bench/results/decode_strategies.json
    python bench/decode_strategies.py --device cuda --dtype bfloat16 --models emoji-raster gpt-b --seeds 1 \
        --out OUT/decode_gpu.json       # what bench/gpu.sh runs after its own jobs
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from common import env_info, sync, write_json

GPT_B = {"dim": 768, "n_layer": 12, "n_head": 12, "num_classes": 1000, "vocab_size": 16384, "block_size": 256}
EMOJI_CLASSES = ["red heart", "grinning face", "cat face", "red apple", "pizza", "fire", "rocket", "dog face",
                 "sun", "star", "rainbow", "alien"]
RANDOM_SETTINGS = {"cfg": 4.0, "top_k": 2000, "top_p": 1.0, "temperature": 1.0}


def build(name: str, device: torch.device, dtype: torch.dtype) -> tuple:
    """(generator, sampling settings, class ids, draft store or None) of a bench model, on ``device``."""
    from arnodes.engine.models.llamagen import LlamaGen, LlamaGenConfig
    if name == "emoji-raster":
        from arnodes.engine.loader import load_bundle
        bundle = load_bundle(name, device=device, dtype=dtype)
        return bundle.generator, bundle.defaults, [bundle.classes.resolve(c) for c in EMOJI_CLASSES], bundle.draft_store
    if name == "fixture":
        tests = Path(__file__).resolve().parents[1] / "tests"
        sys.path.insert(0, str(tests))
        import parity_llamagen as pl
        model = pl._load(str(tests / "fixtures" / "reference" / "llamagen" / "tiny_a"))[3]
    else:
        torch.manual_seed(0)
        model = LlamaGen(LlamaGenConfig.from_official(GPT_B)).eval()
    return model.to(device, dtype), RANDOM_SETTINGS, [0], None  # untrained: one class shows the floor


def main(argv: list[str] | None = None) -> int:
    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine.generate.compiled import set_default_mode
    from arnodes.engine.generate.decoders import DecodeOptions
    from arnodes.engine.generate.next_token import generate_tokens
    from arnodes.engine.sampling import SamplingParams
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["emoji-raster", "fixture", "gpt-b"])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--window", type=int, default=None, help="drafts per forward (default: one grid row)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the generator's")
    p.add_argument("--compile", choices=["off", "on", "auto"], default="off",
                   help="the decode step of plain decoding (default off: the speculative windows run eager, so "
                        "every strategy is compared in the same mode)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    set_default_mode(a.compile)
    torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    rows = []

    def report(complete: bool) -> None:
        """The JSON so far into ``--out``; printed too once complete (one document on stdout)."""
        result = {"bench": "decode_strategies", "env": env_info(device), "complete": complete,
                  "settings": {"seeds": a.seeds, "window": a.window or "one grid row", "threads": a.threads,
                               "batch": 1, "dtype": a.dtype, "compile": a.compile,
                               "order": "one warm-up image per strategy, then the strategies interleaved per image"},
                  "rows": rows}
        write_json(result, a.out, echo=complete)
    for name in a.models:
        model, settings, class_ids, store = build(name, device, dtype)
        params = SamplingParams(top_k=int(settings["top_k"]), top_p=float(settings["top_p"]),
                                temperature=float(settings.get("temperature", 1.0)), top_p_style="llamagen")
        strategies = [("plain", "-"), ("sjd", "above"), ("gsd", "above")]
        strategies += [("sjd", "store"), ("gsd", "store")] if store is not None else []
        forwards = {k: [] for k in strategies}
        seconds = {k: [] for k in strategies}
        in_store = {k: [] for k in strategies}  # whether the image's grid is one of the store's
        single = {k: [] for k in strategies}  # share of the window forwards that committed one token

        def one(strategy: tuple[str, str], cls: int, seed: int) -> tuple[int, float, int, bool, float | None]:
            stats: dict = {}
            decode, drafts = strategy
            options = DecodeOptions(decode, window=a.window, init="above" if drafts == "-" else drafts)
            generator = torch.Generator(device).manual_seed(seed)
            sync(device)
            t0 = time.perf_counter()
            out = generate_tokens(model, Conditioning((cls,), cfg=float(settings["cfg"])), None, params, generator,
                                  decode=options, stats=stats, draft_store=store)
            sync(device)
            seconds = time.perf_counter() - t0
            stored = store is not None and bool((store.tokens == out.grids[0].reshape(1, -1)).all(1).any())
            per = dict(stats.get("tokens_per_forward", {}))
            per["1"] = per.get("1", 0) - 1  # the prefill: not a window forward
            windows = sum(per.values())
            return stats["forwards"], seconds, stats["tokens"], stored, per["1"] / windows if windows else None

        for strategy in strategies:  # warm-up: first calls pay one-time costs
            one(strategy, class_ids[0], 0)
        for cls in class_ids:
            for seed in range(a.seeds):
                for strategy in strategies:  # interleaved, so drift in the machine's speed hits all alike
                    f, t, tokens, stored, one_token = one(strategy, cls, seed)
                    forwards[strategy].append(f)
                    seconds[strategy].append(t)
                    in_store[strategy].append(stored)
                    single[strategy].append(one_token)
        per = {k: {"model": name, "decode": k[0], "drafts": k[1], "tokens": tokens, "images": len(forwards[k]),
                   "cfg": settings["cfg"], "top_k": settings["top_k"], "top_p": settings["top_p"],
                   "forwards_mean": statistics.mean(forwards[k]), "seconds_mean": statistics.mean(seconds[k]),
                   "seconds_median": statistics.median(seconds[k]),
                   "images_in_store": None if store is None else statistics.mean(in_store[k]),
                   "one_token_forwards": None if k[0] == "plain" else statistics.mean(single[k])}
               for k in strategies}
        for strategy, row in per.items():
            row["fewer_forwards_vs_plain"] = per[strategies[0]]["forwards_mean"] / row["forwards_mean"]
            row["less_time_vs_plain"] = per[strategies[0]]["seconds_mean"] / row["seconds_mean"]
            rows.append(row)
        report(complete=name == a.models[-1])  # after each model: a run cut off by its time slot keeps its rows
    return 0


if __name__ == "__main__":
    sys.exit(main())
