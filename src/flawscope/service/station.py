"""An inspection station: fitted models loaded once, each image scored, decided, drawn, stored and logged.

The HTTP service (:mod:`flawscope.service.app`) and the folder watcher (:mod:`flawscope.service.watch`)
both inspect through :class:`Station`, so a part gets the same answer and the same log row whichever
way it arrived.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from flawscope.data.io import read_image
from flawscope.errors import ConfigError, DataError
from flawscope.models.base import Detector
from flawscope.service.batching import Batcher
from flawscope.service.log import Inspection, InspectionLog, ServedModel
from flawscope.service.store import ContentStore

DEFAULT_MAX_PIXELS = 50_000_000

_SUFFIXES = {"JPEG": "jpg", "TIFF": "tif", "PNG": "png", "BMP": "bmp", "WEBP": "webp", "PPM": "ppm", "GIF": "gif"}


@dataclass
class LoadedModel:
    """A fitted, calibrated detector with the name it is served under and its content hash."""

    name: str
    directory: Path
    detector: Detector
    version: str
    max_batch: int = 8
    batcher: Batcher = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.detector, self.max_batch)

    def describe(self) -> ServedModel:
        return ServedModel(
            self.name,
            self.version,
            type(self.detector).__name__,
            float(self.detector.threshold_ or 0.0),
            [float(score) for score in self.detector.calibration_.get("good_scores", [])],
        )


class InspectionFailed(Exception):
    """An input that could not be inspected; ``inspection`` is its (logged) row, ``error`` set."""

    def __init__(self, inspection: Inspection) -> None:
        super().__init__(inspection.error)
        self.inspection = inspection


def load_models(
    directories: Sequence[str | Path], device: str | None = None, max_batch: int = 8
) -> dict[str, LoadedModel]:
    """Load every model directory once (on ``device``, default the saved one); each is served under its folder's
    name, must be calibrated, and scores up to ``max_batch`` waiting images at once."""
    from flawscope.serialization import content_hash, load_detector

    models: dict[str, LoadedModel] = {}
    for directory in map(Path, directories):
        name = directory.resolve().name
        if name in models:
            raise ConfigError(f"Two model directories are named {name!r}; serve models from folders of distinct names.")
        detector = load_detector(directory, device)
        if not detector.is_calibrated:
            raise ConfigError(
                f"Model {directory} has no threshold: a station answers OK / NOT OK, so calibrate it first "
                "(flawscope fit does; in Python, model.calibrate(good_images) then model.save(...))."
            )
        models[name] = LoadedModel(name, directory, detector, content_hash(directory), max_batch)
    if not models:
        raise ConfigError("Give at least one model directory to serve.")
    return models


def decode_image(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """``(pixels as read_image returns them, file suffix)``; DataError for anything that is not an image, and for
    an image of more than ``max_pixels`` pixels (checked from the header, before decoding)."""
    if not data:
        raise DataError("The uploaded file is empty (0 bytes).")
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise DataError(
                    f"The image is {image.width} x {image.height} = {pixels:,} pixels; this station takes at most "
                    f"{max_pixels:,} (--max-pixels)."
                )
            image.load()
            suffix = _SUFFIXES.get(image.format or "", (image.format or "img").lower())
            return read_image(image), suffix
    except DataError:
        raise
    except UnidentifiedImageError as error:
        raise DataError(
            "The uploaded file is not in an image format this station reads (png, jpg, bmp, tif, ...)."
        ) from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"The uploaded file cannot be decoded as an image ({error}).") from error


class Station:
    """Inspect images with the served models, keep the pictures, log every decision (and every failure)."""

    def __init__(
        self,
        models: dict[str, LoadedModel],
        log: InspectionLog,
        store: ContentStore | None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.models = models
        self.log = log
        self.store = store
        self.max_pixels = max_pixels
        for model in models.values():
            log.remember_model(model.describe())

    def choose(self, name: str | None) -> LoadedModel:
        if name:
            if name not in self.models:
                raise DataError(f"No model named {name!r} is served here; served: {', '.join(self.models)}.")
            return self.models[name]
        if len(self.models) > 1:
            raise DataError(f"Several models are served ({', '.join(self.models)}); say which in the field 'model'.")
        return next(iter(self.models.values()))

    def inspect(
        self,
        data: bytes,
        *,
        model: str | None = None,
        part_id: str | None = None,
        station: str | None = None,
        filename: str | None = None,
        source: str | None = None,
    ) -> Inspection:
        """Score one image given as file bytes, log it, and return its row; raise :class:`InspectionFailed`
        (after logging the failure) when the bytes are not an image this station can inspect. ``source``: see
        :meth:`InspectionLog.record`."""
        started = time.perf_counter()
        row = Inspection(
            model=model or "",
            model_version="",
            image_sha256=hashlib.sha256(data).hexdigest(),
            image_bytes=len(data),
            latency_ms=0.0,
            part_id=part_id,
            station=station,
            filename=filename,
        )
        try:
            chosen = self.choose(model)
            row.model, row.model_version = chosen.name, chosen.version
            pixels, suffix = decode_image(data, self.max_pixels)
        except DataError as error:
            row.error = str(error)
            row.image_key = self._put(data, "bin")
            row.latency_ms = _milliseconds_since(started)
            self.log.record(row, source)
            raise InspectionFailed(row) from error
        self._score(chosen, pixels, row)
        row.image_key = self._put(data, suffix)
        row.latency_ms = _milliseconds_since(started)
        self.log.record(row, source)
        return row

    def _score(self, model: LoadedModel, pixels: np.ndarray, row: Inspection) -> None:
        from flawscope.report import heatmap_overlay, overlay_scale

        decision = model.batcher.decide(pixels)
        row.height, row.width = pixels.shape[:2]
        row.score = decision.score
        row.threshold = float(model.detector.threshold_ or 0.0)
        row.label = "NOT OK" if decision.not_ok else "OK"
        row.boxes = [[int(v) for v in box[:4]] + [round(float(box[4]), 6)] for box in decision.boxes]
        if self.store is not None:
            low, high = overlay_scale(model.detector, decision.anomaly_map)
            overlay = heatmap_overlay(pixels, decision.anomaly_map, vmax=high, vmin=low)
            row.overlay_key = self._put(_encode(overlay, "JPEG", quality=90), "jpg")
            row.mask_key = self._put(_encode(decision.mask, "PNG"), "png")

    def _put(self, data: bytes, suffix: str) -> str | None:
        return None if self.store is None else self.store.put(data, suffix)


def _encode(array: np.ndarray, image_format: str, **options: int) -> bytes:
    """The overlay as JPEG (a picture for people; 18x faster to encode than PNG), the bool mask as 1-bit PNG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _milliseconds_since(started: float) -> float:
    return round(1000 * (time.perf_counter() - started), 3)
