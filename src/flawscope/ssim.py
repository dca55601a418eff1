"""Structural similarity (Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error
visibility to structural similarity", IEEE TIP 2004) as a differentiable per-pixel map.

Convention: pixel values in ``[0, dynamic_range]`` (flawscope feeds images in [0, 1], so
``dynamic_range = 1``); the stabilising constants are ``c1 = (k1 * dynamic_range)^2`` and
``c2 = (k2 * dynamic_range)^2`` with ``k1 = 0.01`` and ``k2 = 0.03`` -- the values Bergmann et
al. (2019) quote as "c1 = 0.01, c2 = 0.03". The local statistics are those of the ``K x K``
patch around each pixel (a uniform window, as the SSIM autoencoder paper describes SSIM between
two ``K x K`` patches), with reflected borders so the map has the input's size;
``alpha = beta = gamma = 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flawscope.errors import ConfigError


def ssim_map(
    images: torch.Tensor,
    references: torch.Tensor,
    window: int = 11,
    dynamic_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-pixel SSIM of two ``N x C x H x W`` tensors (each channel on its own), in ``[-1, 1]``."""
    if window < 1 or window % 2 == 0:
        raise ConfigError(f"The SSIM window must be an odd positive size. Got {window} instead.")
    if images.shape != references.shape:
        raise ConfigError(
            f"SSIM needs two tensors of one shape; got {tuple(images.shape)} and {tuple(references.shape)}."
        )
    with torch.autocast(images.device.type, enabled=False):  # variances by cancellation need float32
        return _ssim(images.float(), references.float(), window, dynamic_range, k1, k2)


def _ssim(
    images: torch.Tensor, references: torch.Tensor, window: int, dynamic_range: float, k1: float, k2: float
) -> torch.Tensor:
    channels = images.shape[1]
    radius = window // 2
    stacked = torch.cat([images, references, images * images, references * references, images * references], dim=1)
    mode = "reflect" if min(images.shape[-2:]) > radius else "replicate"
    padded = F.pad(stacked, (radius, radius, radius, radius), mode=mode)
    # the uniform window is separable: two 1-D means cost 2K instead of K^2 operations a pixel
    means = F.avg_pool2d(F.avg_pool2d(padded, (window, 1), stride=1), (1, window), stride=1)
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = means.split(channels, dim=1)
    var_x = mean_xx - mean_x * mean_x
    var_y = mean_yy - mean_y * mean_y
    covariance = mean_xy - mean_x * mean_y
    c1, c2 = (k1 * dynamic_range) ** 2, (k2 * dynamic_range) ** 2
    luminance = (2 * mean_x * mean_y + c1) / (mean_x * mean_x + mean_y * mean_y + c1)
    contrast_structure = (2 * covariance + c2) / (var_x + var_y + c2)
    return luminance * contrast_structure
