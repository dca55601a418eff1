"""The one image reader: every image enters flawscope through :func:`load_image` (or :func:`read_image`, its pixels).

Accepted: paths (png, jpg, bmp, tif/tiff, webp, pgm/ppm, gif and anything else Pillow decodes), bytes of such a
file, ``PIL.Image`` objects and numpy arrays; 1, 8, 16 and 32 bit; grey, grey+alpha, palette, RGB, RGBA, CMYK,
YCbCr, LAB, HSV. The result is always float32 ``H x W x C`` in ``[0, 1]`` with ``C`` = 1 (grey) or 3 (colour).
What the reader did beyond decoding is said in :attr:`LoadedImage.notes` (and the ``conversion`` column of
``predictions.csv``): the EXIF orientation it applied, the alpha channel it dropped, a CMYK / YCbCr / LAB / HSV
image it turned into RGB, the first frame it took of several, a file whose content is not what its name says.

Everything else is refused with a :class:`DataError` naming the source and the reason: missing, empty, truncated
and corrupt files, folders, formats Pillow does not read, float images with values outside ``[0, 1]`` (NaN and
inf included), 32-bit integer images beyond 16 bit, and images of more pixels than the limit
(:func:`set_max_pixels`, default :data:`DEFAULT_MAX_PIXELS`), which is checked from the file's header before
any pixel is decoded -- a decompression bomb costs neither the time nor the memory it declares.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from flawscope.errors import ConfigError, DataError
from flawscope.resize import resize_pixels, scaled_size

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".gif"})

DEFAULT_MAX_PIXELS = 50_000_000
"""The largest image (width x height) read unless :func:`set_max_pixels` says otherwise: 50 megapixels, e.g.
8,660 x 5,773; as float32 RGB it takes 600 MB."""

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_COLOUR_SPACES = frozenset({"CMYK", "YCbCr", "LAB", "HSV"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_SUFFIXES_OF_FORMAT = {
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"},
    "PNG": {".png"},
    "BMP": {".bmp", ".dib"},
    "TIFF": {".tif", ".tiff"},
    "WEBP": {".webp"},
    "PPM": {".pgm", ".ppm", ".pbm", ".pnm"},
    "GIF": {".gif"},
}
_BAND_ROWS = 512  # rows of a large 8-bit image converted to float at a time
_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_limit = {"max_pixels": DEFAULT_MAX_PIXELS}
_RAISE_THE_LIMIT = "Raise the limit with --max-pixels (flawscope.set_max_pixels) if such images are wanted."


@dataclass(frozen=True)
class LoadedImage:
    """An image as read: float32 ``H x W x C`` pixels in ``[0, 1]`` (uint8 ``0..255`` where an 8-bit image was
    read with ``eight_bit=True``: :func:`as_float` turns either into floats), how they were converted, the file
    format."""

    pixels: np.ndarray
    notes: tuple[str, ...] = ()
    format: str | None = None

    @property
    def conversion(self) -> str:
        """The notes as one line ("" when the image needed nothing beyond decoding)."""
        return "; ".join(self.notes)


class TileCache:
    """The image a run of :class:`ImageTile` reads was last cut from, decoded and scaled: one image, so that reading
    an image's tiles in turn decodes it once and memory holds one image, however many there are."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._source: object = None
        self._scale = 0.0
        self._loaded: LoadedImage | None = None

    def load(self, source: ImageInput, scale: float, limit: int | None) -> LoadedImage:
        """``source`` as read (8-bit pixels kept as uint8: a quarter of the floats), resized by ``scale``."""
        with self._lock:
            if self._loaded is None or self._source is not source or self._scale != scale:
                self._loaded = None  # the previous image is let go before the next one is decoded
                loaded = load_image(source, limit=limit, eight_bit=True)
                if scale != 1.0:
                    size = scaled_size(loaded.pixels.shape[0], loaded.pixels.shape[1], scale)
                    loaded = LoadedImage(resized_pixels(loaded.pixels, size), loaded.notes, loaded.format)
                self._source, self._scale, self._loaded = source, scale, loaded
            return self._loaded


@dataclass(frozen=True)
class ImageTile:
    """The ``size`` x ``size`` square at ``(top, left)`` of image ``source`` resized by ``scale``, read when it is
    needed: how a tiled model's training images reach it (:mod:`flawscope.tiling`). Tiles of one image share a
    :class:`TileCache`, so that reading them one after another decodes the image once."""

    source: ImageInput
    top: int
    left: int
    size: int
    scale: float = 1.0
    cache: TileCache = field(default_factory=TileCache, compare=False, repr=False)


ImageInput = str | os.PathLike | Image.Image | np.ndarray | ImageTile


def set_max_pixels(limit: int) -> None:
    """Refuse images of more than ``limit`` pixels (width x height) from now on, in this process.

    Pillow's own guard (``PIL.Image.MAX_IMAGE_PIXELS``) is raised to ``limit`` when it is lower, so that the
    limit set here is the one that holds.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"The pixel limit must be a positive whole number. Got {limit!r} instead.")
    _limit["max_pixels"] = limit
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit


def max_pixels() -> int:
    """The pixel limit in force (:func:`set_max_pixels`)."""
    return _limit["max_pixels"]


def describe(source: ImageInput | bytes) -> str:
    """A short name for an image source, used in messages and result tables."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or f"<PIL image {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array shape={source.shape} dtype={source.dtype}>"
    if isinstance(source, bytes):
        return f"<{len(source):,} bytes>"
    if isinstance(source, ImageTile):
        return f"{describe(source.source)} [tile at {source.top},{source.left}]"
    return f"<{type(source).__name__}>"


def read_image(source: ImageInput) -> np.ndarray:
    """Read one image as float32 ``H x W x C`` in ``[0, 1]``, C in {1, 3} (:func:`load_image`'s pixels).

    Raises
    ------
    DataError
        If the file is missing, empty, truncated, too large or not an image, or the array has a shape or
        value range that is not an image. The message names the source.
    """
    return load_image(source).pixels


def load_image(
    source: ImageInput | bytes, *, name: str | None = None, limit: int | None = None, eight_bit: bool = False
) -> LoadedImage:
    """Read one image and say how it was converted; ``name`` names it in messages (default: the path),
    ``limit`` overrides the pixel limit of :func:`set_max_pixels` for this image. With ``eight_bit`` an 8-bit
    image (file or uint8 array) keeps uint8 pixels -- how a tiled model holds a large image, converting a tile at
    a time; any other image is read as floats all the same."""
    name = name or describe(source)
    if isinstance(source, ImageTile):
        return _cut(source, limit)
    if isinstance(source, np.ndarray):
        if eight_bit and source.dtype == np.uint8:
            return LoadedImage(_image_channels(source, name))
        return LoadedImage(_array_to_float(source, name))
    if isinstance(source, Image.Image):
        return _from_pil(source, name, eight_bit)
    if isinstance(source, bytes):
        if not source:
            raise DataError(f"Image {name} is empty (0 bytes).")
        return _decode(io.BytesIO(source), name, limit or max_pixels(), "", eight_bit)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        _check_file(path)
        return _decode(path, name, limit or max_pixels(), path.suffix.lower(), eight_bit)
    raise DataError(
        f"Cannot read an image from a {type(source).__name__}; expected a path, bytes, a PIL image or a numpy array."
    )


def read_mask(path: str | os.PathLike, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as bool ``H x W``.

    A mask of two levels (0 and anything: 0/255, 0/1, 0/65535) marks every non-zero pixel defective; a mask of
    more levels (saved as JPEG, or a soft mask) marks the pixels of at least half its largest value. A colour
    mask counts its brightest channel. ``expected_size`` is ``(height, width)`` of the image the mask belongs
    to; a mask of another size raises :class:`DataError` naming both.
    """
    pixels = read_image(path).max(axis=2)
    levels = np.unique(pixels)
    mask = pixels > 0 if len(levels) <= 2 else pixels >= levels[-1] / 2
    if expected_size is not None and mask.shape != tuple(expected_size):
        raise DataError(
            f"Mask {path} is {mask.shape[1]}x{mask.shape[0]} (width x height) but its image is "
            f"{expected_size[1]}x{expected_size[0]}; masks must have the size of their image."
        )
    return mask


def image_size(source: ImageInput) -> tuple[int, int]:
    """``(height, width)`` of an image as :func:`read_image` returns it (EXIF orientation applied), without
    decoding its pixels when it is a file."""
    if isinstance(source, ImageTile):
        return source.size, source.size
    if not isinstance(source, (str, os.PathLike)):
        pixels = read_image(source)
        return pixels.shape[0], pixels.shape[1]
    path = Path(source)
    _check_file(path)
    with _open(path, str(path)) as image:
        width, height = image.size
        if _exif_orientation(image, str(path)) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return height, width


def _cut(tile: ImageTile, limit: int | None) -> LoadedImage:
    """The pixels of ``tile``; DataError when its square does not lie inside its (scaled) image."""
    whole = tile.cache.load(tile.source, tile.scale, limit)
    height, width = whole.pixels.shape[:2]
    if tile.top < 0 or tile.left < 0 or tile.top + tile.size > height or tile.left + tile.size > width:
        raise DataError(
            f"{describe(tile)}: a {tile.size} px tile at {tile.top},{tile.left} does not lie inside the image, "
            f"{width} x {height} px at scale {tile.scale}."
        )
    square = whole.pixels[tile.top : tile.top + tile.size, tile.left : tile.left + tile.size]
    return LoadedImage(np.ascontiguousarray(as_float(square)), whole.notes, whole.format)


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an image file.")
    if not path.is_file():
        raise DataError(f"Image file {path} does not exist (or is not a file).")
    if path.stat().st_size == 0:
        raise DataError(f"Image file {path} is empty (0 bytes).")


def _open(file: Path | io.BytesIO, name: str) -> Image.Image:
    """Open (read the header of) an image file; DataError for anything Pillow cannot identify."""
    try:
        return Image.open(file)
    except UnidentifiedImageError as error:
        raise DataError(f"Image {name} is not in a format Pillow reads (png, jpg, bmp, tif, webp, ...).") from error
    except Image.DecompressionBombError as error:  # beyond twice Pillow's own limit, which Pillow checks first
        raise DataError(f"Image {name} is refused before decoding: {error} {_RAISE_THE_LIMIT}") from error
    except MemoryError:
        raise
    except Exception as error:  # Pillow's format plugins raise many types for a damaged header
        raise _undecodable(name, error) from error


def _undecodable(name: str, error: Exception) -> DataError:
    return DataError(f"Image {name} cannot be decoded ({error}); it is corrupt, truncated or not an image.")


def _decode(file: Path | io.BytesIO, name: str, limit: int, suffix: str, eight_bit: bool) -> LoadedImage:
    with _open(file, name) as image:
        width, height = image.size
        if width * height > limit:
            raise DataError(
                f"Image {name} is refused before decoding: it is {width} x {height} = {width * height:,} pixels, more "
                f"than the limit of {limit:,} (a decompression bomb, or a larger image than expected). "
                + _RAISE_THE_LIMIT
            )
        try:
            image.load()
            loaded = _from_pil(image, name, eight_bit)
            frames = getattr(image, "n_frames", 1)  # counting them reads the file to its end: may meet damage too
        except (DataError, MemoryError):
            raise
        except Exception as error:  # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError, ...
            raise _undecodable(name, error) from error
        notes = list(loaded.notes)
        if frames > 1:
            notes.insert(0, f"first of {frames} frames")
        if suffix and image.format in _SUFFIXES_OF_FORMAT and suffix not in _SUFFIXES_OF_FORMAT[image.format]:
            notes.insert(0, f"{image.format} file named {suffix}")
        return LoadedImage(loaded.pixels, tuple(notes), image.format)


def _exif_orientation(image: Image.Image, name: str) -> int:
    """The EXIF orientation tag of ``image`` (1 = upright), read from its header without decoding pixels."""
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except MemoryError:
        raise
    except Exception as error:  # a damaged EXIF block
        raise _unreadable_exif(name, error) from error


def _upright(image: Image.Image, name: str) -> tuple[int, Image.Image]:
    """The EXIF orientation of ``image`` and the (decoded) image turned upright by it."""
    orientation = _exif_orientation(image, name)
    if orientation == 1:
        return orientation, image
    try:
        return orientation, ImageOps.exif_transpose(image) or image
    except MemoryError:
        raise
    except Exception as error:
        raise _unreadable_exif(name, error) from error


def _unreadable_exif(name: str, error: Exception) -> DataError:
    return DataError(f"Image {name} has an EXIF block that cannot be read ({error}).")


def _from_pil(image: Image.Image, name: str, eight_bit: bool = False) -> LoadedImage:
    orientation, image = _upright(image, name)
    notes = [f"EXIF orientation {orientation} applied"] if orientation in range(2, 9) else []
    if image.width == 0 or image.height == 0:
        raise DataError(f"Image {name} has zero size ({image.width}x{image.height}).")
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image).astype(np.float32) / 65535.0
        return LoadedImage(np.clip(array, 0.0, 1.0)[..., None], tuple(notes))
    if mode == "I":
        return LoadedImage(_integer_to_float(np.asarray(image), name), tuple(notes))
    if mode == "F":
        return LoadedImage(_array_to_float(np.asarray(image, dtype=np.float32), name), tuple(notes))
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        notes.append("alpha channel dropped")
    if mode in _COLOUR_SPACES:
        notes.append(f"{mode} converted to RGB")
    grey = mode in ("1", "L", "LA", "La")
    target = "L" if grey else "RGB"
    converted = image if mode == target else image.convert(target)  # no copy of an image already in its mode
    if eight_bit:
        return LoadedImage(np.asarray(converted).reshape(converted.height, converted.width, -1), tuple(notes))
    return LoadedImage(_eight_bit_to_float(converted), tuple(notes))


def as_float(pixels: np.ndarray) -> np.ndarray:
    """Pixels as read, as float32 in [0, 1]: uint8 ones divided by 255, float ones as they are (no copy)."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255.0)
    return pixels


def resized_pixels(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixels as read (float or uint8) at ``size``: themselves where they are that size already (uint8 kept), else
    resized as floats."""
    if tuple(pixels.shape[:2]) == tuple(size):
        return pixels
    return resize_pixels(as_float(pixels), size)


def _eight_bit_to_float(image: Image.Image) -> np.ndarray:
    """An "L" or "RGB" image as float32 ``H x W x C`` in [0, 1], converted ``_BAND_ROWS`` rows at a time: a large
    image is held as Pillow's bytes and the floats, never also as a whole uint8 array."""
    channels = 1 if image.mode == "L" else 3
    pixels = np.empty((image.height, image.width, channels), dtype=np.float32)
    for top in range(0, image.height, _BAND_ROWS):
        bottom = min(top + _BAND_ROWS, image.height)
        band = image if image.height <= _BAND_ROWS else image.crop((0, top, image.width, bottom))
        rows = pixels[top:bottom]
        rows[...] = np.asarray(band).reshape(rows.shape)
        rows /= 255.0
    return pixels


def _integer_to_float(array: np.ndarray, name: str) -> np.ndarray:
    """32-bit integer pixels (Pillow's mode "I", e.g. some 16-bit PNG and TIFF files): read as 16 bit."""
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
        raise DataError(
            f"Image {name} has 32-bit integer pixels from {low} to {high}; flawscope reads integer images of up "
            "to 16 bit (0 to 65535). Save it as 16-bit, or as float in [0, 1]."
        )
    return (array.astype(np.float32) / 65535.0)[..., None]


def _image_channels(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as ``H x W x C``, C in {1, 3}; DataError for a shape that is not an image."""
    if array.size == 0:
        raise DataError(f"Image {name} is empty (shape {array.shape}).")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise DataError(
            f"Image {name} has shape {array.shape}; expected H x W, H x W x 1, H x W x 3 or H x W x 4 (channels last)."
        )
    return array[..., : {1: 1, 2: 1, 3: 3, 4: 3}[array.shape[2]]]


def _array_to_float(array: np.ndarray, name: str) -> np.ndarray:
    array = _image_channels(array, name)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype in (np.uint8, np.uint16):
        pixels = array.astype(np.float32)
        pixels /= 255.0 if array.dtype == np.uint8 else 65535.0  # in place: a large image is not held twice
        return pixels
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise DataError(
                f"Image {name} is a float image with values outside [0, 1] (or NaN / inf); scale it to [0, 1] "
                "or give uint8/uint16 pixels."
            )
        return np.ascontiguousarray(array)
    raise DataError(f"Image {name} has dtype {array.dtype}; expected uint8, uint16, bool or float in [0, 1].")
