"""Anomaly-map operations in torch: Gaussian smoothing and bilinear resizing (the numpy post-processing of maps
is in :mod:`flawscope.postprocess`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ``ceil(4 sigma)``."""
    radius = max(1, math.ceil(4.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``N x H x W`` maps with reflected borders; ``sigma <= 0`` is a no-op."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma).to(maps.device, maps.dtype)
    radius = kernel.numel() // 2
    out = maps[:, None]  # N x 1 x H x W
    pad_mode = "reflect" if min(maps.shape[-2:]) > radius else "replicate"
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode=pad_mode), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode=pad_mode), kernel.view(1, 1, -1, 1))
    return out[:, 0]


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``N x h x w`` maps to ``N x size[0] x size[1]``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
