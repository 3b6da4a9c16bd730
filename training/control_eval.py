"""How well a control adapter places the subject: foreground masks, IoU, and off-centre placements.

Shared by the control benchmark (``bench/emoji_control.py``) and the bundled-adapter test. The
emoji are drawn on white, so the subject is what is not white: pixels whose darkest channel is
``INK`` below white, with holes filled (white eyes or teeth inside a face are the subject too).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

INK = 48  # 0-255: how far below white a pixel's darkest channel must be to count as ink


def foreground(img: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (B, 3, H, W) -> filled foreground masks (B, H, W): everything not reachable from
    the border through white-ish pixels."""
    ink = img.add(1).mul(127.5).amin(1) < 255 - INK  # (B, H, W)
    bg = torch.zeros_like(ink)
    bg[:, 0], bg[:, -1], bg[:, :, 0], bg[:, :, -1] = ~ink[:, 0], ~ink[:, -1], ~ink[:, :, 0], ~ink[:, :, -1]
    for _ in range(img.shape[-1] * 2):
        grown = F.max_pool2d(bg.float().unsqueeze(1), 3, 1, 1).squeeze(1).bool() & ~ink
        if torch.equal(grown, bg):
            break
        bg = grown
    return ~bg


def iou(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per-image intersection over union of two (B, H, W) bool masks."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float().clamp_min(1)
    return (inter / union).tolist()


def subject_box(drawing: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) as fractions of the frame: the bounding box of a uint8 drawing's foreground."""
    fg = foreground(torch.from_numpy(drawing).permute(2, 0, 1)[None].float().div(127.5).sub(1))[0].numpy()
    ys, xs = np.nonzero(fg)
    size = drawing.shape[0]
    if len(xs) == 0:
        return np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32) / size


def off_centre_placements(drawing: np.ndarray, box: np.ndarray, n: int, rng: np.random.Generator,
                          scale: tuple[float, float] = (0.4, 0.6), min_offset: float = 0.18) -> list[np.ndarray]:
    """``n`` placements of a uint8 drawing's subject (its ``box``) on white: longer side U(scale) of the
    frame, its centre at least ``min_offset`` of the frame away from the middle."""
    from PIL import Image

    size = drawing.shape[0]
    x0, y0, x1, y1 = (np.clip(box, 0, 1) * size).round().astype(int)
    crop = Image.fromarray(drawing[y0:y1, x0:x1])
    out = []
    while len(out) < n:
        fit = rng.uniform(*scale) * size / max(crop.size)
        w, h = max(1, round(crop.size[0] * fit)), max(1, round(crop.size[1] * fit))
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        if np.hypot(x + w / 2 - size / 2, y + h / 2 - size / 2) < min_offset * size:
            continue
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(crop.resize((w, h), Image.LANCZOS), (x, y))
        out.append(np.asarray(canvas))
    return out
