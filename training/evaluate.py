"""Evaluate a bundled emoji model (the manifest dir written by ``train.py --export``).

    python -m arnodes.training.evaluate --weights weights [--sweep] [--write] [--samples weights/samples.png]

Metrics:
- tokenizer PSNR (dB, 0-255 pixels, mean over images) on the held-out split of
  ``data.py`` (classes never seen by the tokenizer + dark-skin-tone variants),
  and on 500 training renderings for comparison;
- generation: ``--eval-classes`` random classes x ``--seeds`` seeds; each sample's
  nearest training image (pixel L2 at 32x32, among the generator's training
  images) must be of the requested class (``nn_class_acc``); ``nn_distinct`` is
  the number of distinct nearest classes over the number of requested classes.
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
import torch.nn.functional as F

from ..engine.conditioning import Conditioning
from ..engine.generate.canvas import TokenCanvas
from ..engine.generate.next_scale import generate_scales
from ..engine.loader import load_manifest
from ..engine.sampling import SamplingParams
from . import data as emoji_data
from .export import MANIFEST, set_defaults
from .tokenizer_stage import to_model_images


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[-1, 1] [B,3,H,W] -> uint8 [B,H,W,3]."""
    return img.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def tokenizer_psnr(tok, images: np.ndarray, batch: int = 100) -> float:
    """Mean per-image PSNR (dB) of encode -> decode on uint8 ``images``."""
    vals = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        rec = to_uint8(tok.decode_scales(tok.encode_scales(to_model_images(x, torch.device("cpu")))))
        mse = ((rec.astype(np.float64) - x.astype(np.float64)) ** 2).reshape(len(x), -1).mean(1)
        vals.append(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10)))
    return float(np.concatenate(vals).mean())


@torch.no_grad()
def generate(bundle, class_ids: list[int], seed: int, cfg: float, top_k: int, top_p: float,
             batch: int = 100) -> np.ndarray:
    """uint8 [N,64,64,3] samples for ``class_ids`` through the engine's next-scale generation."""
    model, tok = bundle.generator, bundle.tokenizer
    gen = torch.Generator().manual_seed(seed)
    params = SamplingParams(top_k=top_k, top_p=top_p)
    out = []
    for i in range(0, len(class_ids), batch):
        ids = tuple(class_ids[i:i + batch])
        cond = Conditioning(class_ids=ids, cfg=cfg)
        canvas = TokenCanvas.empty("var", "emoji", [(p, p) for p in model.cfg.patch_nums], len(ids))
        res = generate_scales(model, tok, cond, canvas, params, gen)
        out.append(to_uint8(tok.decode_scales(res.grids)))
    model.clear_caches()
    return np.concatenate(out)


def small(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,64,64,3] -> float [N, 3*32*32] (area downsampling)."""
    t = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(t, size=(32, 32), mode="area").flatten(1)


def nn_metrics(samples: np.ndarray, requested: list[int], ref: torch.Tensor, ref_labels: np.ndarray) -> dict[str, float]:
    """Nearest reference image (L2 at 32x32) for each sample: class accuracy and distinct classes."""
    d = torch.cdist(small(samples), ref)
    nearest = ref_labels[d.argmin(1).numpy()]
    req = np.asarray(requested)
    return {"nn_class_acc": float((nearest == req).mean()),
            "nn_distinct": float(len(set(nearest.tolist())) / len(set(req.tolist())))}


def evaluate(weights: Path, data_cache: Path, eval_classes: int, seeds: list[int], sweep: bool,
             samples_path: Path | None, write: bool) -> dict[str, Any]:
    torch.set_num_threads(2)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    manifest = weights / MANIFEST
    bundle = load_manifest(manifest)
    info = json.loads(manifest.read_text(encoding="utf-8"))
    classes = json.loads((weights / info["classes"]).read_text(encoding="utf-8"))
    data_classes = info.get("training", {}).get("args", {}).get("data_classes")
    d = emoji_data.load_dataset(data_cache, data_classes, log=log)
    # map data-set class ids to the bundle's class ids (by emoji)
    by_emoji = {c["emoji"]: i for i, c in enumerate(classes)}
    remap = np.array([by_emoji.get(c["emoji"], -1) for c in d.classes])
    t0 = time.time()
    metrics: dict[str, Any] = {}
    held = d.tokenizer_heldout()
    train = d.tokenizer_train()
    train = train[np.random.default_rng(0).permutation(len(train))[:500]]
    metrics["tokenizer_psnr_heldout"] = tokenizer_psnr(bundle.tokenizer, d.images[held])
    metrics["tokenizer_psnr_heldout_n"] = int(len(held))
    metrics["tokenizer_psnr_train"] = tokenizer_psnr(bundle.tokenizer, d.images[train])
    log(f"tokenizer PSNR held-out {metrics['tokenizer_psnr_heldout']:.2f} dB ({len(held)} images), "
        f"train {metrics['tokenizer_psnr_train']:.2f} dB")

    ref_idx = d.generator_train()
    ref_idx = ref_idx[remap[d.labels[ref_idx]] >= 0]
    ref, ref_labels = small(d.images[ref_idx]), remap[d.labels[ref_idx]]
    n_cls = len(classes)
    rng = np.random.default_rng(1234)
    picked = sorted(rng.choice(n_cls, size=min(eval_classes, n_cls), replace=False).tolist())

    def score(cfg: float, top_k: int, top_p: float, seed_list: list[int], ids: list[int]) -> dict[str, float]:
        accs, dist = [], []
        for s in seed_list:
            m = nn_metrics(generate(bundle, ids, s, cfg, top_k, top_p), ids, ref, ref_labels)
            accs.append(m["nn_class_acc"])
            dist.append(m["nn_distinct"])
        return {"nn_class_acc": float(np.mean(accs)), "nn_distinct": float(np.mean(dist))}

    defaults = dict(bundle.defaults)
    if sweep:  # choose the defaults on other seeds than the reported ones
        grid = [(c, k, p) for c in (1.0, 3.0) for (k, p) in ((0, 0.0), (50, 0.9))]
        best = None
        for c, k, p in grid:
            m = score(c, k, p, [1000], picked[::2])
            log(f"sweep cfg={c} top_k={k} top_p={p}: {m}")
            key = m["nn_class_acc"] + 0.5 * m["nn_distinct"]
            if best is None or key > best[0]:
                best = (key, {"cfg": c, "top_k": k, "top_p": p})
        defaults = best[1]
        metrics["sweep_choice"] = defaults
    m = score(float(defaults["cfg"]), int(defaults["top_k"]), float(defaults["top_p"]), seeds, picked)
    metrics.update(m)
    metrics["eval_classes"], metrics["seeds"] = len(picked), seeds
    metrics["defaults"] = defaults
    log(f"generation with {defaults}: {m}")

    if samples_path is not None:
        ids = sorted(np.random.default_rng(7).choice(n_cls, size=min(64, n_cls), replace=False).tolist())
        ids = (ids * 64)[:64]
        imgs = generate(bundle, ids, 0, float(defaults["cfg"]), int(defaults["top_k"]), float(defaults["top_p"]))
        grid = imgs.reshape(8, 8, 64, 64, 3).transpose(0, 2, 1, 3, 4).reshape(512, 512, 3)
        from PIL import Image

        Image.fromarray(grid).save(samples_path)
        (samples_path.with_suffix(".txt")).write_text(
            "\n".join(f"{r * 8 + c}: {classes[ids[r * 8 + c]]['name']}" for r in range(8) for c in range(8)) + "\n",
            encoding="utf-8")
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
    p.add_argument("--sweep", action="store_true", help="choose cfg / top_k / top_p on other seeds first")
    p.add_argument("--samples", default=None, help="write an 8x8 grid of samples here")
    p.add_argument("--write", action="store_true", help="store defaults + metrics in the manifest")
    a = p.parse_args(argv)
    m = evaluate(Path(a.weights), Path(a.data_cache), a.eval_classes, [int(s) for s in a.seeds.split(",")],
                 a.sweep, Path(a.samples) if a.samples else None, a.write)
    print(json.dumps(m, indent=2))


if __name__ == "__main__":
    main()
