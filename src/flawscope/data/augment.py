"""Training-time augmentation for a few good images: more views of the same parts, only those a user declares
valid for them.

A part that may lie mirrored, turned or under brighter light in production can be shown that way in
training, so that a model fitted on five images does not take the turned part for a defect. Which of these
hold is a property of the part and the station, never a default: a connector mirrored is a defect.

Declared as strings (the command line's ``--augment``):

* ``hflip`` / ``vflip``: mirrored left-right / top-bottom, each with probability one half;
* ``rot90``: turned by 0, 90, 180 or 270 degrees (only for square images, or a model that squashes every image
  to a square; a turned non-square image has another shape);
* ``rotate=D``: turned by an angle drawn uniformly in ``[-D, D]`` degrees (bilinear, borders reflected);
* ``brightness=F``: every pixel times a factor drawn in ``[1 - F, 1 + F]``, clipped to [0, 1];
* ``contrast=F``: deviations from the image's mean times a factor drawn in ``[1 - F, 1 + F]``, clipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from flawscope.data.datasets import ImageDataset, Sample
from flawscope.data.io import read_image
from flawscope.errors import ConfigError

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
MAX_ROTATION_DEGREES = 45.0
MAX_FACTOR = 0.9


def _flip(axis: int) -> Transform:
    def flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.flip(image, axis=axis) if rng.random() < 0.5 else image

    return flip


def _rot90(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.rot90(image, k=int(rng.integers(4)), axes=(0, 1))


def _rotate(degrees: float) -> Transform:
    def rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        angle = float(rng.uniform(-degrees, degrees))
        turned = ndimage.rotate(image, angle, axes=(1, 0), reshape=False, order=1, mode="reflect")
        return np.clip(turned, 0.0, 1.0)

    return rotate


def _brightness(amount: float) -> Transform:
    def brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(image * rng.uniform(1 - amount, 1 + amount), 0.0, 1.0)

    return brightness


def _contrast(amount: float) -> Transform:
    def contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        mean = image.mean()
        return np.clip(mean + (image - mean) * rng.uniform(1 - amount, 1 + amount), 0.0, 1.0)

    return contrast


def parse_transform(spec: str) -> Transform:
    """One declared augmentation (see the module docstring); ConfigError naming the valid ones otherwise."""
    name, _, value = spec.strip().partition("=")
    plain = {"hflip": _flip(1), "vflip": _flip(0), "rot90": _rot90}
    if name in plain and not value:
        return plain[name]
    limits = {
        "rotate": (_rotate, MAX_ROTATION_DEGREES),
        "brightness": (_brightness, MAX_FACTOR),
        "contrast": (_contrast, MAX_FACTOR),
    }
    if name in limits and value:
        make, largest = limits[name]
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if 0.0 < amount <= largest:
            return make(amount)
        raise ConfigError(f"Augmentation {spec!r}: {name}=X takes a number in (0, {largest:g}].")
    raise ConfigError(
        f"Unknown augmentation {spec!r}. Valid: hflip, vflip, rot90, rotate=DEGREES, brightness=F, contrast=F."
    )


def augment(
    images: ImageDataset, transforms: Sequence[str], copies: int = 4, seed: int = 0, *, name: str = "augmented"
) -> ImageDataset:
    """The images and ``copies`` augmented views of each (every declared transform drawn afresh per view).

    Each view keeps its image's label and group -- its image's name when it has none -- so a split by group
    (``fit_out_of_fold`` included) never puts an image and a view of it on both sides; its ``Sample.view`` numbers
    it (``fit_out_of_fold`` calibrates on the images as taken only). Views are held in memory (float32): meant
    for the few images of a few-shot start.
    """
    if copies < 1:
        raise ConfigError(f"copies must be at least 1. Got {copies} instead.")
    chosen = [parse_transform(spec) for spec in transforms]
    if not chosen:
        raise ConfigError("augment needs at least one transform (e.g. 'hflip').")
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    for sample in images.samples:
        group = sample.group or sample.name
        samples.append(dataclasses.replace(sample, group=group))
        pixels = read_image(sample.image)
        for copy in range(1, copies + 1):
            view = pixels
            for transform in chosen:
                view = transform(view, rng)
            image = np.ascontiguousarray(view, dtype=np.float32)
            name_of_view = f"{sample.name}#view{copy}"
            samples.append(dataclasses.replace(sample, image=image, name=name_of_view, group=group, view=copy))
    return ImageDataset(samples, f"{name} ({len(images)} images x {copies + 1} views)")


__all__ = ["augment", "parse_transform"]
