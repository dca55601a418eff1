"""Bilinear resizing in numpy, the same arithmetic as torch's ``F.interpolate`` (``align_corners=False``).

Each resize is one interpolation matrix per axis (``out = rows @ image @ columns.T``), applied through its few
non-zero taps per output pixel.

* :func:`resize_image` -- what :func:`flawscope.data.transforms.resize_image` does to model input:
  antialiased bilinear (``antialias=True``; the triangle filter stretched by the scale when shrinking,
  as in Pillow and torch's ``_upsample_bilinear2d_aa``), grey repeated to three channels, clipped to [0, 1].
* :func:`resize_pixels` -- the same antialiased resize of an image, channels kept (a tiled model's
  ``tile_scale``, :mod:`flawscope.tiling`).
* :func:`resize_map` -- what :func:`flawscope.maps.upsample_maps` does to anomaly maps: plain bilinear.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def antialiased_weights(in_size: int, out_size: int) -> np.ndarray:
    """``out_size x in_size`` weights of torch's antialiased bilinear resize along one axis (computed in float32
    as torch computes them: the same weights to the last bit, so the same pixels to 1e-7)."""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    support = scale if scale >= 1.0 else f32(1.0)
    inverse = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    for index in range(out_size):
        centre = scale * f32(index + 0.5)
        first = max(int(centre - support + f32(0.5)), 0)
        last = min(int(centre + support + f32(0.5)), in_size)
        offsets = (np.arange(first, last).astype(np.float32) - centre + f32(0.5)) * inverse
        row = np.maximum(f32(1.0) - np.abs(offsets), f32(0.0))
        weights[index, first:last] = row / row.sum(dtype=np.float32)
    return weights


@functools.lru_cache(maxsize=64)
def bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """``out_size x in_size`` weights of torch's bilinear resize (no antialiasing) along one axis: the source
    position ``scale * (i + 0.5) - 0.5`` rounded to float32 once, as torch's fused multiply-add does."""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    exact = np.float64(scale) * (np.arange(out_size) + 0.5) - 0.5
    source = np.maximum(exact.astype(np.float32), f32(0.0))
    lower = source.astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    fraction = source - lower.astype(np.float32)
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, lower), f32(1.0) - fraction)
    np.add.at(weights, (rows, upper), fraction)
    return weights


@functools.lru_cache(maxsize=64)
def _taps(kind: str, in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero part of an interpolation matrix: ``out x K`` source indices and weights (a few taps each)."""
    weights = (antialiased_weights if kind == "antialiased" else bilinear_weights)(in_size, out_size)
    count = max(1, int((weights != 0).sum(axis=1).max()))
    first = np.argmax(weights != 0, axis=1)
    index = np.minimum(first[:, None] + np.arange(count)[None, :], in_size - 1)
    taps = np.take_along_axis(weights, index, axis=1)
    taps[first[:, None] + np.arange(count)[None, :] >= in_size] = 0.0  # clipped indices repeat a counted tap
    return index, taps


def _resize_axis(array: np.ndarray, kind: str, out_size: int, axis: int) -> np.ndarray:
    """Resize ``array`` along ``axis`` (1 or 2 of a 3-D array) by gathering each output's few taps -- no BLAS
    call, whose threads would compete with the graph's for the cores."""
    index, taps = _taps(kind, array.shape[axis], out_size)
    gathered = np.take(array, index, axis=axis)  # the axis becomes out x K
    shape = [1] * gathered.ndim
    shape[axis], shape[axis + 1] = taps.shape
    return (gathered * taps.reshape(shape)).sum(axis=axis + 1, dtype=np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One float ``H x W x C`` image in [0, 1] -> ``3 x size[0] x size[1]`` float32 in [0, 1]."""
    channels = np.moveaxis(np.asarray(image, dtype=np.float32), 2, 0)  # C x H x W
    if tuple(channels.shape[1:]) != tuple(size):
        channels = _resize_axis(_resize_axis(channels, "antialiased", size[1], 2), "antialiased", size[0], 1)
    if channels.shape[0] == 1:  # grey: resized once, then repeated
        channels = np.repeat(channels, 3, axis=0)
    return np.clip(channels, 0.0, 1.0).astype(np.float32, copy=False)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(height, width)`` of an image of this size resized by ``scale``: rounded, at least 1 px."""
    if scale == 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_pixels(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One float ``H x W x C`` image -> ``size[0] x size[1] x C`` float32, antialiased bilinear (channels kept)."""
    if tuple(image.shape[:2]) == tuple(size):
        return image.astype(np.float32, copy=False)
    channels = np.moveaxis(np.asarray(image, dtype=np.float32), 2, 0)
    resized = _resize_axis(_resize_axis(channels, "antialiased", size[1], 2), "antialiased", size[0], 1)
    return np.ascontiguousarray(np.moveaxis(np.clip(resized, 0.0, 1.0), 0, 2))


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One ``h x w`` float map -> ``size[0] x size[1]`` float32, bilinear."""
    if tuple(anomaly_map.shape) == tuple(size):
        return anomaly_map.astype(np.float32, copy=False)
    rows = _resize_axis(anomaly_map.astype(np.float32)[None], "bilinear", size[1], 2)
    return _resize_axis(rows, "bilinear", size[0], 1)[0]


__all__ = ["antialiased_weights", "bilinear_weights", "resize_image", "resize_map", "resize_pixels", "scaled_size"]
