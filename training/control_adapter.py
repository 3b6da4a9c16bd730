"""Train a control adapter for the bundled emoji generator, on a frozen generator.

The data teaches what control is for: besides the centred drawings, the placed drawings of
data v2 (subject scaled 0.35-0.85 and anywhere in the frame) with the edge map of exactly that
placement as the condition, so the map, not the class, decides where the subject is and how
large. The adapter's output projections start at zero (the model starts uncontrolled); the
generator never changes, so the base model and its other tasks stay as they are.

Each training image's map is made with Canny at the node's default thresholds, or at a fainter
pair half of the time (the shipped default, so light outlines count too). Labels are dropped to the null class 10% of the time and the control 10% of the time,
as classifier-free guidance needs: its unconditional branch is null class + zero control.

    python -m arnodes.training.control_adapter --weights weights --type canny --minutes 45
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..engine.canny import canny
from ..engine.control.var_cnn import VARControlAdapter, VARControlConfig
from . import data as emoji_data
from .common import Progress, cosine_lr, seed_everything
from .export import MANIFEST, _jsonable, open_stage
from .generator_stage import tokenize

# ComfyUI Canny's defaults and a fainter pair, each for half of the training samples
TRAINING_PAIRS = ((0.4, 0.8), (0.15, 0.35))
# what the shipped adapter's maps are made with by default: the fainter pair, because light subjects
# (a yellow star, a sun) have no edges at all at 0.4 / 0.8 (controlled IoU 0.66 -> 0.77 on 24 placements)
PREPROCESSORS = {"canny": {"type": "canny", "low_threshold": 0.15, "high_threshold": 0.35}}


def control_images(d: emoji_data.EmojiData, classes: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(image indices, bundle class ids): every drawing of the bundle's classes (centred, skin tones,
    shifted, placed), minus the held-out dark skin tones."""
    by_emoji = {c["emoji"]: i for i, c in enumerate(classes)}
    remap = np.array([by_emoji.get(c["emoji"], -1) for c in d.classes], np.int64)
    idx = d.select((remap[d.labels] >= 0) & (d.split != emoji_data.SPLIT_HELDOUT_DARK))
    return idx, remap[d.labels[idx]]


def random_placements(images: np.ndarray, boxes: np.ndarray, copies: int, rng: np.random.Generator,
                      scale: tuple[float, float] = (0.3, 0.9)) -> np.ndarray:
    """More placed drawings: each image's subject (its box) cut out, resized so its longer side is
    U(scale) of the frame, and pasted on white at a random position where it fits. (N*copies, H, W, 3)."""
    from PIL import Image

    n, size = len(images), images.shape[1]
    out = np.full((n * copies, size, size, 3), 255, np.uint8)
    for k in range(copies):
        for i in range(n):
            x0, y0, x1, y1 = (np.clip(boxes[i], 0, 1) * size).round().astype(int)
            if x1 - x0 < 2 or y1 - y0 < 2:
                out[k * n + i] = images[i]
                continue
            crop = Image.fromarray(images[i][y0:y1, x0:x1])
            fit = rng.uniform(*scale) * size / max(crop.size)
            w, h = max(1, round(crop.size[0] * fit)), max(1, round(crop.size[1] * fit))
            x, y = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
            canvas = Image.new("RGB", (size, size), (255, 255, 255))
            canvas.paste(crop.resize((w, h), Image.LANCZOS), (int(x), int(y)))
            out[k * n + i] = np.asarray(canvas)
    return out


@torch.no_grad()
def edge_maps(images: np.ndarray, low: float, high: float, batch: int = 512) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> edge maps as engine images (N, 1, H, W) in {-1, 1}, stored as int8."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 255
        out.append(canny(x, low, high).mul(2).sub(1).to(torch.int8))
    return torch.cat(out)


def train(adapter: VARControlAdapter, var, var_input: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
          styles: torch.Tensor, maps: tuple[torch.Tensor, torch.Tensor], placed: torch.Tensor, *, steps: int,
          batch: int, lr: float, budget_s: float, gen: torch.Generator, placed_share: float) -> dict:
    """Cross-entropy of the frozen generator's teacher-forced logits under the adapter's condition."""
    opt = torch.optim.AdamW(adapter.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    null, any_style, V = var.cfg.num_classes, var.cfg.num_styles, var.cfg.vocab_size
    placed_idx, other_idx = torch.nonzero(placed).squeeze(1), torch.nonzero(~placed).squeeze(1)
    bar = Progress(steps, "control adapter")
    t0, step, warm = time.time(), 0, 100
    adapter.train()
    while step < steps and not (budget_s and time.time() - t0 > budget_s):
        frac = max(step / steps, (time.time() - t0) / budget_s if budget_s else 0.0)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, frac, lr, warm)
        n_placed = int(round(batch * placed_share))
        idx = torch.cat([placed_idx[torch.randint(0, len(placed_idx), (n_placed,), generator=gen)],
                         other_idx[torch.randint(0, len(other_idx), (batch - n_placed,), generator=gen)]])
        lab = labels[idx].clone()
        lab[torch.rand(batch, generator=gen) < 0.1] = null
        sty = styles[idx].clone()
        sty[torch.rand(batch, generator=gen) < 0.5] = any_style
        use_low = torch.rand(batch, generator=gen) < 0.5
        m = torch.where(use_low.view(-1, 1, 1, 1), maps[1][idx], maps[0][idx]).float().expand(-1, 3, -1, -1)
        keep = (torch.rand(batch, generator=gen) >= 0.1).float()  # 10%: no control (the null condition)
        signal = adapter(m)
        signal.per_block = {b: t * keep.view(-1, 1, 1) for b, t in signal.per_block.items()}
        logits = var(lab, var_input[idx], sty, control=signal)
        loss = F.cross_entropy(logits.view(-1, V), targets[idx].view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1, loss=loss.item())
    bar.close()
    adapter.eval()
    return {"steps": step, "seconds": round(time.time() - t0)}


def write_adapter(weights: Path, name: str, adapter: VARControlAdapter, run: dict) -> Path:
    """Save the adapter next to the bundle and list it under the manifest's "controls"."""
    file = f"emoji_control_{name}.safetensors"
    state = {k: v.detach().float().contiguous().clone() for k, v in adapter.state_dict().items()}
    save_file(state, str(weights / file), metadata={"format": "pt"})
    path = weights / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    controls = dict(manifest.get("controls", {}))
    previous = controls.get(name, {}).get("training", [])
    controls[name] = {"kind": "var-cnn", "file": file, "config": _jsonable(adapter.cfg),
                      "preprocessor": PREPROCESSORS[name], "training": list(previous) + [run]}
    manifest["controls"] = controls
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return weights / file


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="weights", help="folder with the exported bundle (the adapter is added)")
    p.add_argument("--type", default="canny", choices=sorted(PREPROCESSORS))
    p.add_argument("--data-cache", default=str(emoji_data.DEFAULT_CACHE))
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--minutes", type=float, default=0.0, help="wall-time budget (0: none)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--placed-share", type=float, default=0.6, help="fraction of each batch from placed drawings")
    p.add_argument("--extra-placements", type=int, default=2,
                   help="random re-placements made per drawing (pixel space) on top of data v2's placed drawings")
    p.add_argument("--continue", dest="resume", action="store_true", help="start from the shipped adapter")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    st = open_stage(a.weights, a.data_cache, a.threads)
    log, weights, bundle, manifest, classes, d = st.log, st.weights, st.bundle, st.manifest, st.classes, st.data
    idx, labels = control_images(d, classes)
    gen = seed_everything(a.seed)
    images = d.images[idx]
    placed = d.kind[idx] == emoji_data.KIND_PLACED
    extra = random_placements(images, d.boxes[idx], a.extra_placements, np.random.default_rng(a.seed))
    reps = a.extra_placements
    images = np.concatenate([images, extra])
    labels = np.concatenate([labels] + [labels] * reps)
    style = np.concatenate([d.style[idx]] + [d.style[idx]] * reps).astype(np.int64)
    placed = np.concatenate([placed] + [np.ones_like(placed)] * reps)
    log(f"{len(images)} images of {len(classes)} classes ({int(placed.sum())} placed, {len(extra)} re-placed here)")
    var = bundle.generator.float().requires_grad_(False)
    g = var.cfg
    cfg = VARControlConfig(embed_dim=g.embed_dim, depth=g.depth, patch_nums=tuple(g.patch_nums),
                           image_size=int(bundle.image_size))
    adapter = VARControlAdapter(cfg)
    if a.resume:
        from safetensors.torch import load_file
        adapter.load_state_dict(load_file(str(weights / f"emoji_control_{a.type}.safetensors")))
    t0 = time.time()
    var_input, targets = tokenize(bundle.tokenizer, images, torch.device("cpu"))
    maps = tuple(edge_maps(images, low, high) for low, high in TRAINING_PAIRS)
    log(f"tokenised and preprocessed in {time.time() - t0:.0f}s")
    result = train(adapter, var, var_input, targets, torch.from_numpy(labels),
                   torch.from_numpy(style), maps, torch.from_numpy(placed),
                   steps=a.steps, batch=a.batch, lr=a.lr, budget_s=60 * a.minutes, gen=gen,
                   placed_share=a.placed_share)
    run = {**result, "images": int(len(images)), "placed_images": int(placed.sum()),
           "extra_placements": reps, "batch": a.batch, "lr": a.lr,
           "placed_share": a.placed_share, "threshold_pairs": [list(p) for p in TRAINING_PAIRS], "seed": a.seed, "continued": a.resume,
           "data_version": emoji_data.DATA_VERSION}
    out = write_adapter(weights, a.type, adapter, run)
    log(f"wrote {out} ({result['steps']} steps, {result['seconds']} s)")


if __name__ == "__main__":
    main()
