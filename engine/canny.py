"""Canny edge maps, the control adapters' preprocessing (and the graph's ``Canny`` node).

Thresholds follow ComfyUI's core Canny node: on the gradient magnitude of a [0, 1] grey image
after a 5x5 Gaussian blur (sigma 1) and an unnormalised 3x3 Sobel (kornia's canny, which ComfyUI
calls), so the same two numbers give comparable maps in both places. Steps: blur, gradient, thin to one pixel by non-maximum
suppression along the gradient direction, keep strong edges and the weak ones connected to them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import InvalidInputError

GREY_WEIGHTS = (0.299, 0.587, 0.114)


def _gaussian_kernel(size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)  # (size, size)


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """x (B, 1, H, W), reflect-padded so borders do not become edges."""
    k = kernel.shape[-1] // 2
    return F.conv2d(F.pad(x, (k, k, k, k), mode="replicate"), kernel.to(x)[None, None])


def _non_max_suppression(mag: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Keep a pixel when it is the maximum along its gradient direction (quantised to 4 directions)."""
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180  # (B, 1, H, W)
    sector = torch.round(angle / 45).long() % 4  # 0: horizontal gradient, 1: 45 deg, 2: vertical, 3: 135 deg
    padded = F.pad(mag, (1, 1, 1, 1))
    H, W = mag.shape[-2:]

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return padded[..., 1 + dy:1 + dy + H, 1 + dx:1 + dx + W]

    offsets = ((0, 1), (1, 1), (1, 0), (1, -1))  # neighbour (dy, dx) along each sector's direction
    keep = torch.zeros_like(mag, dtype=torch.bool)
    for s, (dy, dx) in enumerate(offsets):
        is_max = (mag >= shifted(dy, dx)) & (mag >= shifted(-dy, -dx))
        keep |= (sector == s) & is_max
    return mag * keep


def _hysteresis(strong: torch.Tensor, weak: torch.Tensor) -> torch.Tensor:
    """Grow strong edges into 8-connected weak ones until nothing changes."""
    edges = strong.float()
    allowed = (strong | weak).float()
    for _ in range(max(strong.shape[-2:]) * 2):
        grown = F.max_pool2d(edges, 3, stride=1, padding=1) * allowed
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges


def check_thresholds(low: float, high: float) -> None:
    for name, v in (("low_threshold", low), ("high_threshold", high)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 < v < 1.0):
            raise InvalidInputError(f"Canny {name} must be in (0, 1), got {v!r}")
    if low > high:
        raise InvalidInputError(f"Canny low_threshold {low} is above high_threshold {high}")


@torch.no_grad()
def canny(img: torch.Tensor, low_threshold: float = 0.4, high_threshold: float = 0.8) -> torch.Tensor:
    """img (B, 3, H, W) in [0, 1] -> edges (B, 1, H, W) in {0, 1}."""
    if img.ndim != 4 or img.shape[1] != 3:
        raise InvalidInputError(f"Canny needs images [B, 3, H, W], got {tuple(img.shape)}")
    check_thresholds(low_threshold, high_threshold)
    x = img.float().clamp(0, 1)
    grey = (x * torch.tensor(GREY_WEIGHTS, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    blurred = _filter(grey, _gaussian_kernel().to(x.device))
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)  # unnormalised
    gx, gy = _filter(blurred, sobel), _filter(blurred, sobel.t())
    mag = torch.sqrt(gx * gx + gy * gy + 1e-12)
    thin = _non_max_suppression(mag, gx, gy)
    return _hysteresis(thin > high_threshold, thin > low_threshold)
