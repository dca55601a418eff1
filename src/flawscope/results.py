"""What scoring returns: :class:`Prediction` for a set of images, :class:`ScoredImage` for one."""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass, field

import numpy as np

from flawscope.data.datasets import Sample
from flawscope.postprocess import Box


@dataclass(frozen=True)
class Prediction:
    """What ``predict`` returns for N images.

    ``anomaly_maps`` hold one float32 ``H_i x W_i`` map per image at that image's own size.
    ``labels`` (True = NOT OK), ``masks`` and ``boxes`` (``(x0, y0, x1, y1, score)``, x1/y1
    exclusive) need a calibrated detector and are None otherwise. ``errors`` maps the name of
    every input that could not be read to the reason (only with ``on_error="skip"``);
    ``conversions`` the name of every image the reader converted to what it did (alpha dropped,
    EXIF orientation applied, first of several frames, ...).
    """

    names: list[str]
    scores: np.ndarray
    anomaly_maps: list[np.ndarray]
    labels: np.ndarray | None = None
    masks: list[np.ndarray] | None = None
    boxes: list[list[Box]] | None = None
    threshold: float | None = None
    errors: dict[str, str] = field(default_factory=dict)
    conversions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = len(self.names)
        sized: dict[str, Sized | None] = {
            "scores": self.scores,
            "anomaly_maps": self.anomaly_maps,
            "labels": self.labels,
            "masks": self.masks,
            "boxes": self.boxes,
        }
        for what, value in sized.items():
            if value is not None and len(value) != count:
                raise ValueError(f"Prediction has {count} names but {len(value)} {what}.")

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class ScoredImage:
    """One image's result from :meth:`Detector.iter_predict` (``error`` set when it could not be read).

    ``image`` holds the pixels as read (float ``H x W x C`` in [0, 1]; uint8 for an 8-bit image a tiled model
    scored, :func:`flawscope.data.io.as_float` turns either into floats), so a consumer that draws overlays
    does not decode the file a second time; ``conversion`` says what the reader did to them beyond
    decoding (:attr:`flawscope.data.io.LoadedImage.notes`; "" for none).
    """

    sample: Sample
    score: float = float("nan")
    anomaly_map: np.ndarray | None = None
    error: str | None = None
    image: np.ndarray | None = None
    conversion: str = ""
