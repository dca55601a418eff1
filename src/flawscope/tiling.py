"""Tiling: images far larger than a model's input scored at native resolution (or at a given scale).

A whole solar module, a steel strip or a web of material is thousands of pixels wide while its defects are a few
pixels; resized to a 224 px model input they vanish. A tiled model (parameters ``tile``, ``overlap`` and
``tile_scale``, which every position-free method has) instead

* learns from square tiles of its training images (:func:`tile_dataset`: each image resized by ``tile_scale``,
  cut into ``tile`` px squares overlapping by at least ``overlap`` px, read lazily, one image decoded at a time);
* scores an image tile by tile, ``batch_size`` tiles per pass, and blends the tile maps back into one map at the
  image's size (:func:`score_in_tiles`): each tile map weighted by a window that is 1 in its middle and falls
  linearly to nearly 0 across the overlap at each side, divided by the sum of the windows -- a weighted mean
  with no seam where tiles meet, in which a tile's border, where the backbone sees padding, counts least;
* takes the largest value of that map as the image score, whatever the method's own image score is.

Memory is bounded by one image, its map and one batch of tiles, not by the number of tiles. The windows are
separable and the tiles a full grid, so their sum is the product of two 1-D sums and never takes a map's memory.

No torch here: a fitted :class:`~flawscope.models.base.Detector` and an exported model in :mod:`flawscope.runtime`
tile alike (:class:`~flawscope.scoring.Scorer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from flawscope.data.datasets import ImageDataset
from flawscope.data.io import ImageTile, TileCache, as_float, describe, image_size, resized_pixels
from flawscope.errors import ConfigError, DataError
from flawscope.resize import resize_map, scaled_size

MIN_TILE = 16
MAX_TILE_SCALE = 4.0
# the parameters a tiled model has beside its method's, with their defaults (no tiling)
TILING_DEFAULTS: Mapping[str, Any] = {"tile": None, "overlap": 0, "tile_scale": 1.0}

ScorePixels = Callable[[list[np.ndarray]], list[tuple[float, np.ndarray]]]


@dataclass(frozen=True)
class Tiling:
    """How images are cut: ``size`` px square tiles overlapping by at least ``overlap`` px (at most half a tile),
    of the image resized by ``scale`` (1 = native resolution)."""

    size: int
    overlap: int = 0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < MIN_TILE:
            raise ConfigError(f"The tile size must be a whole number of pixels >= {MIN_TILE}. Got {self.size!r}.")
        if (
            isinstance(self.overlap, bool)
            or not isinstance(self.overlap, int)
            or not 0 <= self.overlap <= self.size // 2
        ):
            raise ConfigError(
                f"The tile overlap must be a whole number of pixels from 0 to half the tile ({self.size // 2} for "
                f"{self.size} px tiles). Got {self.overlap!r}."
            )
        scale_ok = isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool)
        if not scale_ok or not math.isfinite(self.scale) or not 0.0 < self.scale <= MAX_TILE_SCALE:
            raise ConfigError(f"The tile scale must be a number in (0, {MAX_TILE_SCALE}]. Got {self.scale!r}.")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Tiling | None:
        """The tiling of a model's parameters (``tile``, ``overlap``, ``tile_scale``); None for an untiled model."""
        size = params.get("tile")
        if size is None:
            return None
        return cls(size, params.get("overlap", 0), float(params.get("tile_scale", 1.0)))

    def describe(self) -> str:
        """E.g. '512 px tiles, 64 px overlap, at native resolution'."""
        at = "native resolution" if self.scale == 1.0 else f"scale {self.scale:g}"
        return f"{self.size} px tiles, {self.overlap} px overlap, at {at}"

    def scaled_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` of an image of this size once resized by ``scale``."""
        return scaled_size(height, width, self.scale)

    def check(self, height: int, width: int, name: str) -> None:
        """DataError for an image too small to hold one tile (at ``scale``)."""
        scaled = self.scaled_size(height, width)
        if min(scaled) < self.size:
            at = "" if self.scale == 1.0 else f" at scale {self.scale:g} ({scaled[1]} x {scaled[0]} px)"
            raise DataError(
                f"Image {name} is {width} x {height} px{at}, smaller than one {self.size} px tile; a tiled model "
                "scores images of at least one tile. Use a model with smaller tiles, or one without tiling, for them."
            )

    def starts(self, length: int) -> list[int]:
        """Where the tiles along an axis of ``length`` px start: every ``size - overlap`` px, the last one moved back
        to end at the border (so it may overlap its neighbour by more)."""
        stride = self.size - self.overlap
        starts = list(range(0, length - self.size + 1, stride))
        if starts[-1] != length - self.size:
            starts.append(length - self.size)
        return starts

    def window(self) -> np.ndarray:
        """``(size,)`` float32 weights of a tile's pixels along an axis: 1 in the middle, falling linearly across
        ``overlap`` px at each side to ``0.5 / overlap`` (never 0: an image's border pixels lie in one tile)."""
        if self.overlap == 0:
            return np.ones(self.size, dtype=np.float32)
        position = np.arange(self.size, dtype=np.float64) + 0.5
        ramp = np.minimum(position, self.size - position) / self.overlap
        return np.minimum(ramp, 1.0).astype(np.float32)

    def coverage(self, starts: list[int], length: int) -> np.ndarray:
        """``(length,)`` sum of the windows of the tiles at ``starts`` along an axis."""
        total = np.zeros(length, dtype=np.float32)
        window = self.window()
        for start in starts:
            total[start : start + self.size] += window
        return total


def tile_dataset(dataset: ImageDataset, tiling: Tiling) -> ImageDataset:
    """The tiles of every image of ``dataset``, image after image, as samples read lazily (:class:`ImageTile`).

    A tile keeps its image's label, defect type and group (the image's name when it has none, so that splits
    keep an image's tiles together); its name is the image's with the tile's corner. An image smaller than one
    tile raises :class:`DataError` naming it.
    """
    tiles = []
    for sample in dataset.samples:
        height, width = image_size(sample.image)
        tiling.check(height, width, sample.name or describe(sample.image))
        scaled_height, scaled_width = tiling.scaled_size(height, width)
        cache = TileCache()
        for top in tiling.starts(scaled_height):
            for left in tiling.starts(scaled_width):
                tile = ImageTile(sample.image, top, left, tiling.size, tiling.scale, cache)
                name = f"{sample.name}@{top},{left}"
                tiles.append(replace(sample, image=tile, name=name, mask=None, group=sample.group or sample.name))
    return ImageDataset(tiles, f"{dataset.description}, {tiling.describe()}")


def score_in_tiles(
    score_pixels: ScorePixels, image: np.ndarray, tiling: Tiling, batch_size: int
) -> tuple[float, np.ndarray]:
    """``(score, anomaly map at the image's size)`` of one image scored tile by tile.

    ``image`` is float in [0, 1] or uint8 (an 8-bit image read with ``eight_bit=True``, converted to floats a
    batch of tiles at a time). ``score_pixels`` scores a list of float tiles (``size x size x C``) into
    ``(score, map at the tile's size)`` each; ``batch_size`` tiles go to it at a time. The tile maps are blended
    with :meth:`Tiling.window` weights; the score is the map's largest value.
    """
    height, width = image.shape[:2]
    scaled_height, scaled_width = tiling.scaled_size(height, width)
    scaled = resized_pixels(image, (scaled_height, scaled_width))
    rows, columns = tiling.starts(scaled_height), tiling.starts(scaled_width)
    window = tiling.window()
    tile_weights = np.outer(window, window)
    blended = np.zeros((scaled_height, scaled_width), dtype=np.float32)
    corners = [(top, left) for top in rows for left in columns]
    size = tiling.size
    for first in range(0, len(corners), batch_size):
        batch = corners[first : first + batch_size]
        scored = score_pixels([as_float(scaled[top : top + size, left : left + size]) for top, left in batch])
        for (top, left), (_, tile_map) in zip(batch, scored):
            blended[top : top + size, left : left + size] += tile_map * tile_weights
    del scaled
    blended /= tiling.coverage(rows, scaled_height)[:, None]
    blended /= tiling.coverage(columns, scaled_width)[None, :]
    anomaly_map = resize_map(blended, (height, width))
    return float(anomaly_map.max()), anomaly_map


__all__ = ["TILING_DEFAULTS", "Tiling", "score_in_tiles", "tile_dataset"]
