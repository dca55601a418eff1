"""Synthetic textures with known defects and pixel masks, for tests and quick demos.

Every image is a stationary texture (a few random oriented sinusoids plus smoothed noise), so
a good image and a defective one differ only where the mask says. Defects are scratches
(thin bright or dark lines), blobs (dark ellipses) and stains (a local change of contrast).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from flawscope.data.datasets import DEFECTIVE, GOOD, InMemoryDataset

DEFECT_KINDS = ("scratch", "blob", "stain")


def texture(rng: np.random.Generator, size: tuple[int, int], pattern_seed: int = 7) -> np.ndarray:
    """A grey texture in [0, 1] of ``size`` = (height, width).

    The sinusoid frequencies come from ``pattern_seed`` (the same for every image of a set); phase
    and noise come from ``rng``, so images differ like photos of the same material.
    """
    height, width = size
    pattern = np.random.default_rng(pattern_seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros(size, dtype=np.float32)
    for _ in range(3):
        angle, period = pattern.uniform(0, np.pi), pattern.uniform(6, 14)
        phase = rng.uniform(0, 2 * np.pi)
        image += np.sin((np.cos(angle) * cols + np.sin(angle) * rows) * 2 * np.pi / period + phase)
    image += 1.5 * ndimage.gaussian_filter(rng.standard_normal(size).astype(np.float32), 1.5)
    image = (image - image.min()) / (image.max() - image.min() + 1e-6)
    return 0.2 + 0.6 * image


def add_defect(rng: np.random.Generator, image: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(defective image, bool mask)`` with one defect of ``kind`` painted on ``image``."""
    height, width = image.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
    out = image.copy()
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.25, 0.4) * min(height, width)
        along = (cols - cx) * np.cos(angle) + (rows - cy) * np.sin(angle)
        across = -(cols - cx) * np.sin(angle) + (rows - cy) * np.cos(angle)
        mask = (np.abs(across) <= 1.5) & (np.abs(along) <= length / 2)
        out[mask] = 0.98 if rng.random() < 0.5 else 0.02
    elif kind == "blob":
        ry, rx = rng.uniform(0.05, 0.1, size=2) * min(height, width)
        mask = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
        out[mask] = 0.5 * out[mask] * 0.3
    elif kind == "stain":
        radius = rng.uniform(0.07, 0.12) * min(height, width)
        mask = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
        out[mask] = 0.5 + 0.15 * (out[mask] - 0.5) + 0.3
    else:
        raise ValueError(f"Unknown defect kind {kind!r}; choose one of {DEFECT_KINDS}.")
    return np.clip(out, 0.0, 1.0), mask


def make_texture_set(
    n_good: int,
    n_defective: int = 0,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    colour: bool = False,
) -> InMemoryDataset:
    """A dataset of ``n_good`` good textures followed by ``n_defective`` defective ones with masks.

    Images are uint8 arrays (``H x W`` or ``H x W x 3``); masks are bool ``H x W`` (all False
    for good images). The same ``seed`` gives the same images.
    """
    rng = np.random.default_rng(seed)
    images, labels, masks = [], [], []
    for index in range(n_good + n_defective):
        image = texture(rng, size)
        mask = np.zeros(size, dtype=bool)
        if index >= n_good:
            image, mask = add_defect(rng, image, DEFECT_KINDS[index % len(DEFECT_KINDS)])
        pixels = np.round(image * 255).astype(np.uint8)
        if colour:
            pixels = np.stack([pixels, pixels, (pixels * 0.8).astype(np.uint8)], axis=2)
        images.append(pixels)
        labels.append(GOOD if index < n_good else DEFECTIVE)
        masks.append(mask)
    return InMemoryDataset(images, labels, masks, names=[f"texture_{i:04d}" for i in range(len(images))])


def write_mvtec_layout(
    root: str | Path,
    n_train: int = 20,
    n_test_good: int = 6,
    n_test_defective: int = 6,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
) -> Path:
    """Write a synthetic category in MVTec AD layout under ``root`` and return ``root``."""
    root = Path(root)
    train = make_texture_set(n_train, 0, size, seed)
    test = make_texture_set(n_test_good, n_test_defective, size, seed + 1)
    (root / "train" / "good").mkdir(parents=True, exist_ok=True)
    for sample in train:
        Image.fromarray(np.asarray(sample.image)).save(root / "train" / "good" / f"{sample.name}.png")
    for sample in test:
        kind = "good" if sample.label == GOOD else "defect"
        (root / "test" / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(sample.image)).save(root / "test" / kind / f"{sample.name}.png")
        if sample.label == DEFECTIVE:
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            mask = (np.asarray(sample.mask) * 255).astype(np.uint8)
            Image.fromarray(mask).save(root / "ground_truth" / kind / f"{sample.name}_mask.png")
    return root


def dead_leaves(rng: np.random.Generator, size: int, n_shapes: int = 1500) -> np.ndarray:
    """A ``size x size x 3`` float image in [0, 1] from the dead-leaves model, a stand-in for natural images.

    Occluding discs and rectangles with power-law radii (``p(r) ~ r^-3``, the scale statistics
    of natural images) are painted one over another; each is filled with a random colour, a
    random linear shading and, for a third of them, a random stripe texture, and the result is
    slightly blurred. Baradad et al. ("Learning to See by Looking at Noise", NeurIPS 2021) train
    image representations on such images when no natural images can be had; flawscope distils
    its default EfficientAD teacher on them.
    """
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = rng.uniform(0, 1, 3)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    r_min, r_max = 0.01 * size, 0.5 * size
    # inverse-CDF sample of p(r) ~ r^-3 on [r_min, r_max]
    uniform = rng.uniform(0, 1, n_shapes)
    radii = (r_min**-2 - uniform * (r_min**-2 - r_max**-2)) ** -0.5
    for radius in radii:
        cy, cx = rng.uniform(-radius, size + radius, 2)
        y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 1, size)
        x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 1, size)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = rows[y0:y1, x0:x1] - cy, cols[y0:y1, x0:x1] - cx
        if rng.uniform() < 0.5:
            inside = dy * dy + dx * dx <= radius * radius
        else:
            angle = rng.uniform(0, np.pi)
            u, v = np.cos(angle) * dx + np.sin(angle) * dy, -np.sin(angle) * dx + np.cos(angle) * dy
            inside = (np.abs(u) <= radius) & (np.abs(v) <= radius * rng.uniform(0.2, 1.0))
        direction = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(direction) * dx + np.sin(direction) * dy) / radius  # in [-1, 1] over the shape
        shade = rng.uniform(0, 0.3) * ramp
        if rng.uniform() < 1 / 3:
            period = rng.uniform(2, 12)
            shade = shade + rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * (ramp * radius) / period)
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        patch = image[y0:y1, x0:x1]
        patch[inside] = np.clip(colour[None, :] + shade[inside][:, None], 0, 1)
    return ndimage.gaussian_filter(image, sigma=(0.7, 0.7, 0)).clip(0, 1)
