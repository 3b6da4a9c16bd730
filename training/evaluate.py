"""Evaluate a bundled emoji model (the manifest dir written by ``train.py --export``).

    python -m arnodes.training.evaluate --weights weights [--sweep] [--write] [--samples weights/samples.png] \
        [--bench-json bench/results/emoji_model.json]

Metrics:
- tokenizer PSNR (dB, 0-255 pixels, mean over images) on the held-out split of
  ``data.py`` (classes never seen by the tokenizer + dark-skin-tone variants), per
  style, and on 500 training renderings for comparison;
- generation: ``--eval-classes`` random classes x ``--seeds`` seeds (style "any"); each
  sample's nearest reference drawing (pixel L2 at 32x32, among the canonical drawings
  of the model's classes in every shipped style) must be of the requested class
  (``nn_class_acc``); ``nn_distinct`` is the number of distinct nearest classes over
  the number of requested classes;
- seeds: for ``--seed-classes`` classes, seeds 0..3; two samples are *visibly different*
  when their mean absolute pixel difference exceeds ``DISTINCT_MAD`` (0-255 scale);
  ``seed_distinct_mean`` is the mean number of distinct drawings among the 4 (greedy
  clustering), and the same seed run twice must give identical pixels;
- style: samples generated with each style named (100 classes drawn in every style x 3 seeds)
  are judged by the nearest of their class's drawings, one per style (``style_judge.py``;
  its accuracy on tokenizer reconstructions of those drawings is reported with it);
  ``style_acc[NAME]`` is the share judged NAME.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.conditioning import Conditioning
from ..engine.generate import DecodeOptions, generate as engine_generate
from ..engine.generate.speculative import INITS, drafts_used
from ..engine.loader import load_manifest
from ..engine.sampling import SamplingParams
from . import data as emoji_data
from .common import write_bench_json
from .export import MANIFEST, set_defaults
from .style_judge import build_judge, features
from .tokenizer_stage import to_model_images


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[-1, 1] [B,3,H,W] -> uint8 [B,H,W,3]."""
    return img.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def reconstruct(tok, images: np.ndarray, batch: int = 100) -> np.ndarray:
    """uint8 images -> the tokenizer's encode -> decode of them (what model output can look like at best)."""
    with torch.no_grad():
        return np.concatenate([to_uint8(tok.decode_grids(tok.encode_grids(to_model_images(images[i:i + batch],
                                                                                             torch.device("cpu")))))
                               for i in range(0, len(images), batch)])


def tokenizer_psnr(tok, images: np.ndarray, batch: int = 100) -> float:
    """Mean per-image PSNR (dB) of encode -> decode on uint8 ``images``."""
    rec = reconstruct(tok, images, batch)
    mse = ((rec.astype(np.float64) - images.astype(np.float64)) ** 2).reshape(len(images), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))


@torch.no_grad()
def generate(bundle, class_ids: list[int], seed: int, cfg: float, top_k: int, top_p: float,
             batch: int = 100, style: int | None = None, decode: DecodeOptions | None = None,
             stats: list[dict] | None = None) -> np.ndarray:
    """uint8 [N,H,W,3] samples for ``class_ids`` (in ``style``; None = any) through the engine, for either
    family; ``decode``: the raster decode strategy (plain when None), each batch's counts appended to ``stats``."""
    gen = torch.Generator().manual_seed(seed)
    params = SamplingParams(top_k=top_k, top_p=top_p, temperature=float(bundle.defaults.get("temperature", 1.0)),
                            top_p_style="llamagen" if bundle.family == "llamagen" else "var")
    out = []
    for i in range(0, len(class_ids), batch):
        ids = tuple(class_ids[i:i + batch])
        cond = Conditioning(class_ids=ids, cfg=cfg, style_ids=None if style is None else (style,) * len(ids))
        counts: dict = {}
        res = engine_generate(bundle, cond, params=params, generator=gen, decode=decode, stats=counts)
        if stats is not None:
            stats.append(counts)
        out.append(to_uint8(bundle.tokenizer.decode_grids(res.grids)))
    if hasattr(bundle.generator, "clear_caches"):
        bundle.generator.clear_caches()
    return np.concatenate(out)


def nn_metrics(samples: np.ndarray, requested: list[int], ref: torch.Tensor, ref_labels: np.ndarray) -> dict[str, float]:
    """Nearest reference image (L2 at 32x32) for each sample: class accuracy and distinct classes."""
    d = torch.cdist(features(samples), ref)
    nearest = ref_labels[d.argmin(1).numpy()]
    req = np.asarray(requested)
    return {"nn_class_acc": float((nearest == req).mean()),
            "nn_distinct": float(len(set(nearest.tolist())) / len(set(req.tolist())))}


DISTINCT_MAD = 10.0  # mean absolute pixel difference (0-255) above which two samples are different drawings


def distinct_drawings(samples: np.ndarray, threshold: float = DISTINCT_MAD) -> int:
    """How many different drawings among uint8 [n,H,W,3] samples: greedy, a sample is new when it
    differs from every drawing kept so far by more than ``threshold`` mean absolute difference."""
    kept: list[np.ndarray] = []
    for x in samples.astype(np.float32):
        if all(np.abs(x - k).mean() > threshold for k in kept):
            kept.append(x)
    return len(kept)


def seed_metrics(bundle, class_ids: list[int], defaults: dict[str, Any], seeds: int = 4) -> dict[str, Any]:
    """Distinct drawings over ``seeds`` seeds per class, min pairwise difference, same-seed repeatability."""
    runs = np.stack([generate(bundle, class_ids, s, float(defaults["cfg"]), int(defaults["top_k"]),
                              float(defaults["top_p"])) for s in range(seeds)], axis=1)  # [K, seeds, H, W, 3]
    again = generate(bundle, class_ids, 0, float(defaults["cfg"]), int(defaults["top_k"]), float(defaults["top_p"]))
    counts = [distinct_drawings(r) for r in runs]
    pair = [np.abs(r[a].astype(np.float32) - r[b].astype(np.float32)).mean()
            for r in runs for a in range(seeds) for b in range(a + 1, seeds)]
    return {"seed_distinct_mean": float(np.mean(counts)), "seed_classes": len(class_ids), "seeds_per_class": seeds,
            "seed_distinct_hist": {str(k): int(counts.count(k)) for k in range(1, seeds + 1)},
            "seed_pair_mad_mean": float(np.mean(pair)), "seed_pair_mad_min": float(np.min(pair)),
            "distinct_mad_threshold": DISTINCT_MAD, "same_seed_identical": bool(np.array_equal(runs[:, 0], again))}


def style_metrics(bundle, d: emoji_data.EmojiData, remap: np.ndarray, n_classes: int,
                  defaults: dict[str, Any], seeds: int = 3) -> dict[str, Any]:
    """Per named style: the share of samples (classes drawn in every style x ``seeds`` seeds) that the
    nearest-reference judge (``style_judge.py``, validated on tokenizer reconstructions) puts in it."""
    if not bundle.styles:
        return {}
    canon = d.kind == emoji_data.KIND_CANONICAL
    have = [set(remap[d.labels[canon & (d.style == i)]].tolist()) for i in range(len(d.styles))]
    common = sorted(set.intersection(*have) - {-1})
    ids = sorted(np.random.default_rng(99).choice(common, size=min(n_classes, len(common)), replace=False).tolist())
    judge = build_judge(d, remap, ids, lambda x: reconstruct(bundle.tokenizer, x))
    out: dict[str, Any] = {"style_judge": "nearest canonical drawing of the sample's class, per style (L2 at 32x32)",
                           "style_judge_validation_acc": judge.validation_accuracy,
                           "style_judge_validation_images": judge.validation_images}

    def judged(style: int | None) -> np.ndarray:
        return np.concatenate([judge.predict(generate(bundle, ids, seed, float(defaults["cfg"]),
                                                      int(defaults["top_k"]), float(defaults["top_p"]), style=style),
                                             ids) for seed in range(seeds)])
    acc = {name: float((judged(bundle.styles.index(name)) == d.styles.index(name)).mean()) for name in bundle.styles}
    any_pred = judged(None)
    out.update({"style_acc": acc, "style_acc_min": min(acc.values()), "style_classes": len(ids),
                "style_seeds": seeds,
                "style_any_share": {s: float((any_pred == i).mean()) for i, s in enumerate(d.styles)}})
    return out


def evaluate(weights: Path, data_cache: Path, eval_classes: int, seeds: list[int], sweep: bool,
             samples_path: Path | None, write: bool, seed_classes: int = 100,
             style_classes: int = 100, manifest_name: str = MANIFEST, decode: str = "plain",
             draft_init: str = "auto") -> dict[str, Any]:
    """Every metric of the module docstring for the bundle ``weights/manifest_name``; samples are drawn with
    the ``decode`` strategy (a raster model's sjd / gsd, drafting by ``draft_init``; their forward counts
    and draft source are reported)."""
    torch.set_num_threads(2)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    manifest = weights / manifest_name
    options = DecodeOptions(strategy=decode, init=draft_init)
    bundle = load_manifest(manifest)
    info = json.loads(manifest.read_text(encoding="utf-8"))
    classes = json.loads((weights / info["classes"]).read_text(encoding="utf-8"))
    d = emoji_data.load_for_manifest(data_cache, info, log=log)
    # map data-set class ids to the bundle's class ids (by emoji)
    by_emoji = {c["emoji"]: i for i, c in enumerate(classes)}
    remap = np.array([by_emoji.get(c["emoji"], -1) for c in d.classes])
    t0 = time.time()
    metrics: dict[str, Any] = {"data": {
        "classes": len(d.classes), "images": int(len(d.images)), "version": emoji_data.DATA_VERSION,
        "images_by_style": {s: int((d.style == i).sum()) for i, s in enumerate(d.styles)},
        "placed": int((d.kind == emoji_data.KIND_PLACED).sum()), "heldout": int(len(d.tokenizer_heldout())),
        "generator_images": int((remap[d.labels[d.generator_train()]] >= 0).sum())}}
    held = d.tokenizer_heldout()
    train = d.tokenizer_train()
    train = train[np.random.default_rng(0).permutation(len(train))[:500]]
    metrics["tokenizer_psnr_heldout"] = tokenizer_psnr(bundle.tokenizer, d.images[held])
    metrics["tokenizer_psnr_heldout_n"] = int(len(held))
    metrics["tokenizer_psnr_heldout_by_style"] = {
        s: tokenizer_psnr(bundle.tokenizer, d.images[held[d.style[held] == i]]) for i, s in enumerate(d.styles)}
    metrics["tokenizer_psnr_train"] = tokenizer_psnr(bundle.tokenizer, d.images[train])
    log(f"tokenizer PSNR held-out {metrics['tokenizer_psnr_heldout']:.2f} dB ({len(held)} images) "
        f"{metrics['tokenizer_psnr_heldout_by_style']}, train {metrics['tokenizer_psnr_train']:.2f} dB")

    ref_idx = d.reference_set()
    ref_idx = ref_idx[remap[d.labels[ref_idx]] >= 0]
    ref, ref_labels = features(d.images[ref_idx]), remap[d.labels[ref_idx]]
    metrics["reference_drawings"] = int(len(ref_idx))
    n_cls = len(classes)
    rng = np.random.default_rng(1234)
    picked = sorted(rng.choice(n_cls, size=min(eval_classes, n_cls), replace=False).tolist())

    def score(cfg: float, top_k: int, top_p: float, seed_list: list[int], ids: list[int]) -> dict[str, float]:
        accs, dist, counts = [], [], []
        for s in seed_list:
            m = nn_metrics(generate(bundle, ids, s, cfg, top_k, top_p, decode=options, stats=counts), ids, ref,
                           ref_labels)
            accs.append(m["nn_class_acc"])
            dist.append(m["nn_distinct"])
        forwards = sum(c.get("forwards", 0) for c in counts) / max(len(counts), 1)
        return {"nn_class_acc": float(np.mean(accs)), "nn_distinct": float(np.mean(dist)),
                "forwards_per_batch": float(forwards)}

    defaults = dict(bundle.defaults)
    if sweep:  # choose the defaults on other seeds than the reported ones
        grid = [(c, k, p) for c in (1.0, 3.0) for (k, p) in ((0, 0.0), (50, 0.9))]
        best = None
        for c, k, p in grid:
            m = score(c, k, p, [1000], picked[::2])
            log(f"sweep cfg={c} top_k={k} top_p={p}: {m}")
            metrics.setdefault("sweep", []).append({"cfg": c, "top_k": k, "top_p": p, **m})
            key = m["nn_class_acc"] + 0.5 * m["nn_distinct"]
            if best is None or key > best[0]:
                best = (key, {"cfg": c, "top_k": k, "top_p": p})
        defaults = best[1]
        metrics["sweep_choice"] = defaults
    m = score(float(defaults["cfg"]), int(defaults["top_k"]), float(defaults["top_p"]), seeds, picked)
    metrics.update(m)
    metrics["eval_classes"], metrics["seeds"], metrics["decode"] = len(picked), seeds, decode
    metrics["drafts"] = "-" if decode == "plain" else drafts_used(draft_init, bundle.draft_store)
    log(f"generation with {defaults}: {m}")
    seed_ids = sorted(np.random.default_rng(4321).choice(n_cls, size=min(seed_classes, n_cls), replace=False).tolist())
    metrics.update(seed_metrics(bundle, seed_ids, defaults))
    log(f"seeds: {metrics['seed_distinct_mean']:.2f} distinct drawings of 4 "
        f"(same seed identical: {metrics['same_seed_identical']})")
    metrics.update(style_metrics(bundle, d, remap, style_classes, defaults))
    if bundle.styles:
        log(f"styles: judge {metrics['style_judge_validation_acc']:.3f} on reconstructions; {metrics['style_acc']}")
    metrics["defaults"] = defaults

    if samples_path is not None:
        ids = sorted(np.random.default_rng(7).choice(n_cls, size=min(16, n_cls), replace=False).tolist())
        rows = [generate(bundle, ids, s, float(defaults["cfg"]), int(defaults["top_k"]), float(defaults["top_p"]))
                for s in range(4)]  # 16 classes x seeds 0..3, two classes per grid row
        imgs = np.stack(rows, axis=1).reshape(64, 64, 64, 3)
        grid = imgs.reshape(8, 8, 64, 64, 3).transpose(0, 2, 1, 3, 4).reshape(512, 512, 3)
        from PIL import Image

        Image.fromarray(grid).save(samples_path)
        (samples_path.with_suffix(".txt")).write_text(
            "8x8 grid: each row holds two classes x seeds 0..3 (style any)\n"
            + "\n".join(f"row {r} left: {classes[ids[2 * r]]['name']}; right: {classes[ids[2 * r + 1]]['name']}"
                        for r in range(8)) + "\n", encoding="utf-8")
    metrics["eval_seconds"] = round(time.time() - t0, 1)
    if write:
        set_defaults(manifest, defaults, {k: v for k, v in metrics.items() if k != "defaults"})
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="evaluate the emoji model")
    p.add_argument("--weights", default=str(Path(__file__).resolve().parent.parent / "weights"))
    p.add_argument("--data-cache", default=str(emoji_data.DEFAULT_CACHE))
    p.add_argument("--eval-classes", type=int, default=200)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--seed-classes", type=int, default=100, 
                   help="classes for the distinct-drawings-across-seeds metric")
    p.add_argument("--style-classes", type=int, default=100, help="classes per style for the style accuracy")
    p.add_argument("--sweep", action="store_true", help="choose cfg / top_k / top_p on other seeds first")
    p.add_argument("--samples", default=None, help="write an 8x8 grid of samples here")
    p.add_argument("--write", action="store_true", help="store defaults + metrics in the manifest")
    p.add_argument("--manifest", default=MANIFEST, help="which bundled model in --weights (its manifest file)")
    p.add_argument("--decode", default="plain", help="decode strategy of the samples (raster models: sjd, gsd)")
    p.add_argument("--draft-init", default="auto", choices=INITS, help="speculative drafts (sjd / gsd)")
    p.add_argument("--bench-json", default=None, help="also write the metrics (and the machine) to this JSON")
    a = p.parse_args(argv)
    m = evaluate(Path(a.weights), Path(a.data_cache), a.eval_classes, [int(s) for s in a.seeds.split(",")],
                 a.sweep, Path(a.samples) if a.samples else None, a.write, a.seed_classes, a.style_classes,
                 a.manifest, a.decode, a.draft_init)
    if a.bench_json:
        write_bench_json(a.bench_json, Path(a.weights) / a.manifest, m)
    print(json.dumps(m, indent=2))


if __name__ == "__main__":
    main()
