"""Tensor-only image and mask operations, and the one place that states the conventions.

Inside the engine an image is ``[B, 3, H, W]`` float in ``[-1, 1]``. The graph
types follow ComfyUI: IMAGE is ``[B, H, W, 3]`` in ``[0, 1]``, MASK is
``[B, H, W]`` in ``[0, 1]`` with 1 = regenerate. Token-level masks are bool
``[B, h, w]``; ``known`` = True means "keep this token".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InvalidInputError


def check_graph_image(img: torch.Tensor, what: str = "image") -> None:
    if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[-1] != 3:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise InvalidInputError(f"{what} must be a [B, H, W, 3] tensor, got {shape}")
    if not torch.isfinite(img).all():
        raise InvalidInputError(f"{what} contains NaN or infinite values")


def check_graph_mask(mask: torch.Tensor, height: int, width: int, what: str = "mask") -> torch.Tensor:
    """Accept [H, W] or [B, H, W]; return [B, height, width] float in [0, 1].

    A mask of another size than its image is resized to it, bilinearly and without
    antialiasing, as ComfyUI's inpaint nodes (VAEEncodeForInpaint, SetLatentNoiseMask) do;
    a soft edge in the resized mask then means a feathered region, which the task nodes
    composite as they do any soft mask.
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or 0 in mask.shape:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InvalidInputError(f"{what} must be a non-empty [B, H, W] tensor, got {shape}")
    mask = mask if mask.ndim == 3 else mask.unsqueeze(0)
    if not torch.isfinite(mask).all():
        raise InvalidInputError(f"{what} contains NaN or infinite values")
    mask = mask.float()
    if tuple(mask.shape[1:]) != (height, width):
        mask = F.interpolate(mask.unsqueeze(1), size=(height, width), mode="bilinear").squeeze(1)  # (B, H, W)
    return mask.clamp(0, 1)


def graph_to_engine(img_BHWC: torch.Tensor) -> torch.Tensor:
    return img_BHWC.permute(0, 3, 1, 2).float().clamp(0, 1).mul(2).sub(1).contiguous()  # (B, 3, H, W) in [-1, 1]


def engine_to_graph(img_BCHW: torch.Tensor) -> torch.Tensor:
    return img_BCHW.float().add(1).mul(0.5).clamp(0, 1).permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3) in [0, 1]


def resize(img: torch.Tensor, height: int, width: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize [B, C, H, W]; antialiased when shrinking so small targets do not alias."""
    if tuple(img.shape[-2:]) == (height, width):
        return img
    shrinking = height < img.shape[-2] or width < img.shape[-1]
    kwargs = {"antialias": True} if shrinking and mode in ("bilinear", "bicubic") else {}
    if mode in ("bilinear", "bicubic"):
        kwargs["align_corners"] = False
    return F.interpolate(img, size=(height, width), mode=mode, **kwargs)


def resize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return resize(mask.unsqueeze(1), height, width, mode="bilinear").squeeze(1).clamp(0, 1)


def mask_to_grid(mask: torch.Tensor, grid_h: int, grid_w: int, threshold: float = 0.5) -> torch.Tensor:
    """Pixel mask [B, H, W] (1 = regenerate) -> token mask [B, h, w]: a token is regenerated when
    any of its pixels is masked (>= threshold), so nothing masked survives as an old token."""
    pooled = F.adaptive_max_pool2d((mask >= threshold).float().unsqueeze(1), (grid_h, grid_w))
    return pooled.squeeze(1) > 0


def pad_edges(img: torch.Tensor, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
    """Extend [B, C, H, W] by replicating the border (a neutral start for outpainting)."""
    if min(left, top, right, bottom) < 0:
        raise InvalidInputError(f"padding must be >= 0, got left={left} top={top} right={right} bottom={bottom}")
    return F.pad(img, (left, right, top, bottom), mode="replicate")


def outpaint_mask(height: int, width: int, left: int, top: int, right: int, bottom: int, feather: int,
                  batch: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """Soft mask [B, H+top+bottom, W+left+right]: 1 on the new area, ramping to 0 over ``feather``
    pixels into the original image so the seam is regenerated and blended."""
    H, W = height + top + bottom, width + left + right
    ys = torch.arange(H, device=device, dtype=torch.float32).view(H, 1)
    xs = torch.arange(W, device=device, dtype=torch.float32).view(1, W)
    # distance (in px) from each pixel into the original rectangle, counted only from padded sides
    # (an unpadded border is an image edge, not a seam); <= 0 outside the rectangle
    far = float(H + W)
    dists = [ys - top + 1 if top else torch.full_like(ys, far), (top + height) - ys if bottom else torch.full_like(ys, far),
             xs - left + 1 if left else torch.full_like(xs, far), (left + width) - xs if right else torch.full_like(xs, far)]
    inside = torch.minimum(torch.minimum(dists[0], dists[1]), torch.minimum(dists[2], dists[3]))
    mask = (1 - inside / (feather + 1)).clamp(0, 1) if feather > 0 else (inside <= 0).float()
    return mask.unsqueeze(0).expand(batch, H, W).contiguous()


def composite(original: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep ``original`` where mask = 0, ``generated`` where mask = 1 (soft in between). [B, C, H, W]."""
    m = mask.unsqueeze(1).to(generated.dtype)
    return original * (1 - m) + generated * m


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(data_range ** 2 / mse)).item()
