"""Model input sizes, without torch (the exported-model runtime computes them too)."""

from __future__ import annotations

SIDE_MULTIPLE = 32  # the long side of a kept aspect ratio: a multiple of the backbone's largest stride


def aspect_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """The model input size that keeps an image's aspect ratio: the short side ``short_side``, the long
    side the multiple of :data:`SIDE_MULTIPLE` nearest the ratio (at least ``short_side``)."""
    ratio = max(height, width) / min(height, width)
    long_side = max(short_side, round(short_side * ratio / SIDE_MULTIPLE) * SIDE_MULTIPLE)
    return (short_side, long_side) if height <= width else (long_side, short_side)


__all__ = ["SIDE_MULTIPLE", "aspect_size"]
