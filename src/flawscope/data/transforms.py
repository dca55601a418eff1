"""Resize and normalise images into the tensors a backbone expects.

Resize policy: every image is resized (bilinear, antialiased) to a square
``image_size x image_size``, whatever its aspect ratio -- or, for a detector that keeps the aspect
ratio of elongated parts (PatchCore's ``input_shape``), to a short side of ``image_size``
(:func:`aspect_size`); nothing is cropped, so every pixel of the input gets a score. Anomaly maps
are resized back to each image's own size afterwards, so maps and masks line up with the original
pixels. Grey images are repeated to three channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from flawscope.errors import ConfigError

PHOTOMETRIC = ("none", "standardise", "equalise")
# what "standardise" maps every image's mean and deviation to: those of ImageNet photos in [0, 1]
STANDARD_MEAN, STANDARD_STD = 0.45, 0.25


def to_model_input(
    images: Sequence[np.ndarray],
    image_size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    photometric: str = "none",
) -> torch.Tensor:
    """Stack float ``H x W x C`` images into a normalised ``N x 3 x S x S`` float32 tensor (after the
    per-image ``photometric`` normalisation, :func:`photometric_normalise`)."""
    return normalise(photometric_normalise(resize_batch(images, image_size), photometric), mean, std)


def resize_batch(images: Sequence[np.ndarray], image_size: int | tuple[int, int]) -> torch.Tensor:
    """Float ``H x W x C`` images -> one ``N x 3 x S x S`` tensor in [0, 1] (:func:`resize_image` each)."""
    return torch.stack([resize_image(image, image_size) for image in images])


def photometric_normalise(batch: torch.Tensor, mode: str) -> torch.Tensor:
    """Take each image's overall brightness and contrast out of ``N x 3 x H x W`` images in [0, 1].

    ``"none"``: as they are. ``"standardise"``: every image shifted and scaled to the same mean and
    deviation (over its pixels and channels). ``"equalise"``: every channel's histogram made flat
    (each pixel replaced by its rank), which also evens out non-linear differences (gamma).
    """
    if mode == "none":
        return batch
    if mode == "standardise":
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        deviation = batch.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        return (batch - mean) / deviation * STANDARD_STD + STANDARD_MEAN
    if mode == "equalise":
        flat = batch.flatten(2)  # N x 3 x (H W)
        ranks = flat.argsort(dim=2).argsort(dim=2).to(batch.dtype)
        return (ranks / max(flat.shape[2] - 1, 1)).view_as(batch)
    raise ConfigError(f"photometric must be one of {PHOTOMETRIC}; got {mode!r}.")


def normalise(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``N x 3 x H x W`` in [0, 1] -> ``(x - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


def rgb_tensor(image: np.ndarray) -> torch.Tensor:
    """One float ``H x W x C`` image to a ``3 x H x W`` tensor (grey repeated to three channels)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # C x H x W
    return tensor.expand(3, -1, -1) if tensor.shape[0] == 1 else tensor


def resize_image(image: np.ndarray, image_size: int | tuple[int, int]) -> torch.Tensor:
    """One float ``H x W x C`` image to a ``3 x S x S`` tensor in [0, 1] (``3 x H' x W'`` for a size ``(H', W')``)."""
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    tensor = rgb_tensor(image)
    if tuple(tensor.shape[1:]) != size:
        tensor = F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return tensor.clamp(0.0, 1.0).contiguous()


INPUT_SHAPES = ("auto", "square", "aspect")
ASPECT_FROM = 1.5  # "auto" keeps the aspect ratio of training images at least this elongated
LUMA = (0.299, 0.587, 0.114)


def luma(image: torch.Tensor) -> torch.Tensor:
    """A ``3 x H x W`` RGB tensor's ITU-R 601 luma, ``1 x H x W``."""
    return luma_batch(image[None])[0]


def luma_batch(images: torch.Tensor) -> torch.Tensor:
    """``N x 3 x H x W`` RGB -> ``N x 1 x H x W`` ITU-R 601 luma."""
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)
