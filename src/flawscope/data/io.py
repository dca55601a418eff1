"""The one image reader: every image enters flawscope through :func:`read_image`.

Accepted: paths (png, jpg, bmp, tif/tiff, and anything else Pillow decodes), ``PIL.Image``
objects and numpy arrays; 8 and 16 bit; grey, grey+alpha, palette, RGB, RGBA, CMYK. EXIF
orientation is applied. The result is always float32 ``H x W x C`` in ``[0, 1]`` with
``C`` = 1 (grey) or 3 (colour); alpha is dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from flawscope.errors import DataError

ImageInput = str | os.PathLike | Image.Image | np.ndarray

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def describe(source: ImageInput) -> str:
    """A short name for an image source, used in messages and result tables."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or f"<PIL image {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array shape={source.shape} dtype={source.dtype}>"
    return f"<{type(source).__name__}>"


def read_image(source: ImageInput) -> np.ndarray:
    """Read one image as float32 ``H x W x C`` in ``[0, 1]``, C in {1, 3}.

    Raises
    ------
    DataError
        If the file is missing, empty, truncated or not an image, or the array has a shape or
        value range that is not an image. The message names the source.
    """
    if isinstance(source, np.ndarray):
        return _array_to_float(source, describe(source))
    if isinstance(source, Image.Image):
        return _pil_to_float(source, describe(source))
    if isinstance(source, (str, os.PathLike)):
        return _pil_to_float(_open_file(Path(source)), str(source))
    raise DataError(
        f"Cannot read an image from a {type(source).__name__}; expected a path, a PIL image or a numpy array."
    )


def read_mask(path: str | os.PathLike, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as bool ``H x W`` (any non-zero pixel is defective).

    ``expected_size`` is ``(height, width)`` of the image the mask belongs to; a mask of another
    size raises :class:`DataError` naming both.
    """
    mask = read_image(path).max(axis=2) > 0.5
    if expected_size is not None and mask.shape != tuple(expected_size):
        raise DataError(
            f"Mask {path} is {mask.shape[1]}x{mask.shape[0]} (width x height) but its image is "
            f"{expected_size[1]}x{expected_size[0]}; masks must have the size of their image."
        )
    return mask


def image_size(source: ImageInput) -> tuple[int, int]:
    """``(height, width)`` of an image without decoding all pixels when it is a file."""
    if isinstance(source, (str, os.PathLike)):
        with _open_file(Path(source)) as image:
            return image.size[1], image.size[0]
    pixels = read_image(source)
    return pixels.shape[0], pixels.shape[1]


def _open_file(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(f"Image file {path} does not exist (or is not a file).")
    if path.stat().st_size == 0:
        raise DataError(f"Image file {path} is empty (0 bytes).")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(
            f"Image file {path} cannot be decoded ({error}); it is corrupt, truncated or not an image."
        ) from error
    return image


def _pil_to_float(image: Image.Image, name: str) -> np.ndarray:
    image = ImageOps.exif_transpose(image) or image
    if image.width == 0 or image.height == 0:
        raise DataError(f"Image {name} has zero size ({image.width}x{image.height}).")
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image, dtype=np.float32) / 65535.0
        return np.clip(array, 0.0, 1.0)[..., None]
    if mode == "F":
        return _array_to_float(np.asarray(image, dtype=np.float32), name)
    if mode in ("1", "L", "LA"):
        return _array_to_float(np.asarray(image.convert("L")), name)
    return _array_to_float(np.asarray(image.convert("RGB")), name)


def _array_to_float(array: np.ndarray, name: str) -> np.ndarray:
    if array.size == 0:
        raise DataError(f"Image {name} is empty (shape {array.shape}).")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise DataError(
            f"Image {name} has shape {array.shape}; expected H x W, H x W x 1, H x W x 3 or H x W x 4 (channels last)."
        )
    channels = {1: 1, 2: 1, 3: 3, 4: 3}[array.shape[2]]
    array = array[..., :channels]
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise DataError(
                f"Image {name} is a float array with values outside [0, 1] (or NaN); scale it to [0, 1] "
                "or pass uint8/uint16."
            )
        return np.ascontiguousarray(array)
    raise DataError(f"Image {name} has dtype {array.dtype}; expected uint8, uint16, bool or float in [0, 1].")
