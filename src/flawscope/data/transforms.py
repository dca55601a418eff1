"""Resize and normalise images into the tensors a backbone expects.

Resize policy: every image is resized (bilinear, antialiased) to a square
``image_size x image_size``, whatever its aspect ratio; nothing is cropped, so every pixel of the
input gets a score. Anomaly maps are resized back to each image's own size afterwards, so maps
and masks line up with the original pixels. Grey images are repeated to three channels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def to_model_input(
    images: Sequence[np.ndarray],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Stack float ``H x W x C`` images into a normalised ``N x 3 x S x S`` float32 tensor."""
    resized = [resize_image(image, image_size) for image in images]
    batch = torch.stack(resized)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


def resize_image(image: np.ndarray, image_size: int) -> torch.Tensor:
    """One float ``H x W x C`` image to a ``3 x S x S`` tensor in [0, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # C x H x W
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    if tensor.shape[1:] != (image_size, image_size):
        tensor = F.interpolate(tensor[None], size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)[0]
    return tensor.clamp(0.0, 1.0).contiguous()
