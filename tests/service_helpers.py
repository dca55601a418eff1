"""Shared by the service tests: a small calibrated PatchCore saved to disk, and its test images as file bytes."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

import flawscope as fs
from flawscope.data.synthetic import make_texture_set


def save_station_model(directory: Path) -> Path:
    """Fit and calibrate a PatchCore on synthetic textures; save it to ``directory``."""
    train = make_texture_set(12, 0, size=(96, 96), seed=0)
    calibration = make_texture_set(6, 0, size=(96, 96), seed=3)
    model = fs.create("patchcore", image_size=96, coreset_ratio=0.25, device="cpu", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.CalibrationWarning)  # 6 calibration images, on purpose: a fast fixture
        model.fit(train, progress=False).calibrate(calibration, progress=False, rule="sigma", k=3.0)
    model.save(directory)
    return directory


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def station_images() -> tuple[list[bytes], list[bytes]]:
    """``(good, defective)`` textures of another seed than the training ones, as PNG bytes."""
    images = make_texture_set(6, 6, size=(96, 96), seed=1)
    good = [png_bytes(images[i].image) for i in range(6)]
    defective = [png_bytes(images[i].image) for i in range(6, 12)]
    return good, defective
