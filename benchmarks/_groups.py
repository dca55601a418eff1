"""Physical-part groups of the benchmark data sets whose file names carry them only indirectly."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path

from flawscope.data.datasets import Sample

CAPTURE = re.compile(r"exp\d+_num_(\d+)$")
# bsdata_pitting: <sequence>_<timestamp>_<position>_crop_<n>.jpg, e.g. 01_200828110055_305000_090_crop_2.jpg
BSDATA_POSITION = r"_(\d+_\d+)_crop"
TILE_GAP = 100  # largest step of the capture number within one magnetic tile


def capture_number(sample: Sample) -> int:
    match = CAPTURE.match(Path(sample.name).stem)
    if match is None:
        raise SystemExit(f"{sample.name}: not an 'expN_num_M' magnetic-tile name.")
    return int(match.group(1))


def magnetic_tiles(samples: Sequence[Sample], gap: int = TILE_GAP) -> list[str]:
    """The physical tile of every good magnetic-tile image, aligned with ``samples``.

    The ``num`` in ``expN_num_M`` runs up along one tile's captures under the six lighting settings
    (about 20 apart) and jumps between tiles, so every run of images whose consecutive ``num`` differ
    by at most ``gap`` is one tile (``tile0000``, ``tile0001``, ... in ``num`` order)."""
    order = sorted(range(len(samples)), key=lambda i: capture_number(samples[i]))
    tile_of = [""] * len(samples)
    tile = 0
    for previous, current in itertools.pairwise([None, *order]):
        if previous is not None and capture_number(samples[current]) - capture_number(samples[previous]) > gap:
            tile += 1
        tile_of[current] = f"tile{tile:04d}"
    return tile_of
