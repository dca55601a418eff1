"""An inspection station: fitted models loaded once, each image scored, decided, drawn, stored and logged.

The HTTP service (:mod:`flawscope.service.app`) and the folder watcher (:mod:`flawscope.service.watch`)
both inspect through :class:`Station`, so a part gets the same answer and the same log row whichever
way it arrived.
"""

from __future__ import annotations

import copy
import hashlib
import io
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flawscope.data.io import DEFAULT_MAX_PIXELS, load_image, read_image
from flawscope.errors import ConfigError, DataError, ModelFileError
from flawscope.models.base import Detector
from flawscope.models.registry import UPDATABLE
from flawscope.service.batching import Batcher, model_thread
from flawscope.service.log import Inspection, InspectionLog, ServedModel
from flawscope.service.store import ContentStore

_SUFFIXES = {"JPEG": "jpg", "TIFF": "tif", "PNG": "png", "BMP": "bmp", "WEBP": "webp", "PPM": "ppm", "GIF": "gif"}


@dataclass
class LoadedModel:
    """A fitted, calibrated detector with the name it is served under, its content hash (version) and the version
    it was updated from (None for a model as fitted)."""

    name: str
    directory: Path
    detector: Detector
    version: str
    max_batch: int = 8
    parent: str | None = None
    batcher: Batcher = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.detector, self.max_batch)

    @property
    def updatable(self) -> bool:
        return UPDATABLE in self.detector.capabilities

    def describe(self) -> ServedModel:
        return ServedModel(
            self.name,
            self.version,
            type(self.detector).__name__,
            float(self.detector.threshold_ or 0.0),
            [float(score) for score in self.detector.calibration_.get("good_scores", [])],
            self.parent,
            str(self.directory),
        )


def loaded_model(name: str, directory: Path, device: str | None, max_batch: int) -> LoadedModel:
    """The saved model in ``directory``, served as ``name`` (loaded on the model thread, where it will be scored);
    its parent is the version its last update (or recalibration) was made from, as its lineage says."""
    from flawscope.serialization import load_detector

    detector = model_thread().call(lambda: load_detector(directory, device))
    assert detector.version_ is not None  # set by loading
    lineage = detector.lineage_
    parent = lineage[-1].get("parent") if lineage and lineage[-1]["event"] != "fit" else None
    return LoadedModel(name, directory, detector, detector.version_, max_batch, parent)


class NotPossible(Exception):
    """A request about the served models that cannot be done now (nothing queued to teach, no earlier version):
    answered with 409 Conflict."""


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
    models: dict[str, LoadedModel] = {}
    for directory in map(Path, directories):
        name = directory.resolve().name
        if name in models:
            raise ConfigError(f"Two model directories are named {name!r}; serve models from folders of distinct names.")
        model = loaded_model(name, directory, device, max_batch)
        if not model.detector.is_calibrated:
            raise ConfigError(
                f"Model {directory} has no threshold: a station answers OK / NOT OK, so calibrate it first "
                "(flawscope fit does; in Python, model.calibrate(good_images) then model.save(...))."
            )
        models[name] = model
    if not models:
        raise ConfigError("Give at least one model directory to serve.")
    return models


def decode_image(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """``(pixels as read_image returns them, file suffix)``; DataError for anything that is not an image, and for
    an image of more than ``max_pixels`` pixels (checked from the header, before decoding)."""
    loaded = load_image(data, name="the uploaded file", limit=max_pixels)
    return loaded.pixels, _SUFFIXES.get(loaded.format or "", (loaded.format or "img").lower())


class Station:
    """Inspect images with the served models, keep the pictures, log every decision (and every failure), and
    teach a model the parts operators marked as false alarms.

    Teaching: a false alarm's image is queued (:meth:`add_verdict` with ``teach``); :meth:`update_model` makes a
    new version from the queue (:meth:`Detector.update <flawscope.models.base.Detector.update>`),
    :meth:`recalibrate_model` one with a threshold set from the verdicts in the log; either is saved under
    ``versions/<name>/<version>/`` and served from the next request on -- a request already on its way is
    answered by the version it started with, and its log row names that version. :meth:`rollback` serves the
    version the present one was made from again. Every version served stays loaded until the station stops.
    With ``resume``, a station started on the model a later served version descends from (in this log) serves
    that later version, so teaching survives a restart.

    Every model is loaded, scored, updated and recalibrated on the process's one model thread
    (:mod:`flawscope.service.batching`), so inspections wait while a model is updated.
    """

    def __init__(
        self,
        models: dict[str, LoadedModel],
        log: InspectionLog,
        store: ContentStore | None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        versions: Path | None = None,
        device: str | None = None,
        resume: bool = True,
    ) -> None:
        self.log = log
        self.store = store
        self.max_pixels = max_pixels
        self.versions = versions
        self.device = device
        self.resumed: dict[str, tuple[str, str]] = {}  # name -> (version given, version served instead)
        self._changing = threading.Lock()
        self.loaded: dict[str, LoadedModel] = {model.version: model for model in models.values()}
        self.models = {name: self._resumed(model) if resume else model for name, model in models.items()}
        for model in self.models.values():
            log.record_swap(model.describe(), "start")

    # ------------------------------------------------------------------ versions
    def _resumed(self, given: LoadedModel) -> LoadedModel:
        """The version served last under ``given``'s name when it descends from ``given`` (an update of it, or of
        an update of it ...) and its directory still holds it; else ``given``."""
        latest = self.log.served_version(given.name)
        version = latest
        while version is not None and version != given.version:
            entry = self.log.model(version)
            version = entry.parent if entry is not None else None
        if latest is None or version is None or latest == given.version:
            return given
        try:
            model = self._load_version(given.name, latest, given.max_batch)
        except ModelFileError:
            return given
        self.resumed[given.name] = (given.version, latest)
        return model

    def _load_version(self, name: str, version: str, max_batch: int) -> LoadedModel:
        if version in self.loaded:
            return self.loaded[version]
        entry = self.log.model(version)
        if entry is None or entry.directory is None:
            raise ModelFileError(f"The log does not say where version {version} of {name!r} is saved.")
        model = loaded_model(name, Path(entry.directory), self.device, max_batch)
        if model.version != version:
            raise ModelFileError(
                f"{entry.directory} no longer holds version {version} of {name!r} (it holds {model.version})."
            )
        self.loaded[version] = model
        return model

    def add_verdict(
        self, row: Inspection, verdict: str, note: str | None, operator: str | None, *, teach: bool = False
    ) -> None:
        """Store an operator's verdict on ``row``; with ``teach`` (a false alarm: verdict 'ok'), queue its image to
        be taught to its model as good at the model's next update. DataError, before anything is stored, when
        the image cannot be taught."""
        if teach:
            self._check_teachable(row, verdict)
        assert row.id is not None
        self.log.add_verdict(row.id, verdict, note, operator)
        if teach:
            self.log.queue_for_teaching(row.id, row.model, operator)

    def _check_teachable(self, row: Inspection, verdict: str) -> None:
        if verdict != "ok":
            raise DataError("Only a part judged good (verdict 'ok') can be taught as good.")
        if row.error is not None or row.image_key is None or self.store is None:
            raise DataError(f"Inspection {row.id} has no stored image to teach (failed, or stored without images).")
        model = self.models.get(row.model)
        if model is None:
            raise DataError(f"Inspection {row.id} was judged by {row.model!r}, which is not served here.")
        if not model.updatable:
            raise DataError(
                f"{row.model!r} is a {type(model.detector).__name__}, which cannot learn new good images without "
                "fitting again; teaching needs a PatchCore or PaDiM model."
            )

    def pending(self, name: str) -> int:
        """How many images wait to be taught to model ``name``."""
        return len(self.log.pending_teaching(name))

    def update_model(self, name: str) -> dict[str, Any]:
        """Teach model ``name`` every image queued for it and serve the new version; returns the update's record
        (images, what changed, seconds, parent) with the new ``version``. NotPossible when nothing is queued."""
        with self._changing:
            current = self.choose(name)
            if not current.updatable:
                raise NotPossible(f"{name!r} ({type(current.detector).__name__}) cannot be updated.")
            if self.versions is None or self.store is None:
                raise NotPossible("This station keeps no images or model versions, so it cannot teach.")
            queued = [(inspection_id, key) for inspection_id, key in self.log.pending_teaching(name) if key]
            if not queued:
                raise NotPossible(f"No images are queued to teach {name!r}; mark false alarms with teach first.")
            images = [read_image(self.store.path(key)) for _, key in queued]
            updated = model_thread().call(lambda: current.detector.update(images, progress=False))
            model = self._serve_new_version(current, updated, "update", [inspection_id for inspection_id, _ in queued])
            return {**updated.lineage_[-1], "version": model.version}

    def recalibrate_model(self, name: str) -> dict[str, Any]:
        """Set model ``name``'s threshold again from the operators' verdicts in the log -- parts confirmed good
        (except those taught to it) and, where there are any, confirmed defects
        (:meth:`Detector.recalibrate <flawscope.models.base.Detector.recalibrate>`) -- and serve that version;
        returns the recalibration's record with the new ``threshold`` and ``version``."""
        with self._changing:
            current = self.choose(name)
            if self.versions is None or self.store is None:
                raise NotPossible("This station keeps no images or model versions, so it cannot recalibrate.")
            judged = self.log.verdict_images(name)
            good = [read_image(self.store.path(key)) for key, verdict in judged if verdict == "ok"]
            if not good:
                raise NotPossible(f"No part judged by {name!r} has an 'ok' verdict yet (taught parts do not count).")
            defective = [read_image(self.store.path(key)) for key, verdict in judged if verdict == "defect"]
            recalibrated = copy.copy(current.detector)
            model_thread().call(lambda: recalibrated.recalibrate(good, defective, progress=False))
            model = self._serve_new_version(current, recalibrated, "recalibrate")
            return {**recalibrated.lineage_[-1], "threshold": recalibrated.threshold_, "version": model.version}

    def _serve_new_version(
        self, current: LoadedModel, detector: Detector, reason: str, taught: Sequence[int] = ()
    ) -> LoadedModel:
        """Save ``detector`` (made from ``current``) as a new version, log it and serve it from the next request on."""
        assert self.versions is not None
        directory = _save_version(detector, self.versions / current.name)
        model = LoadedModel(current.name, directory, detector, directory.name, current.max_batch, current.version)
        self.log.record_swap(model.describe(), reason, taught)
        self.loaded[model.version] = model
        self.models[current.name] = model
        return model

    def rollback(self, name: str) -> LoadedModel:
        """Serve again the version model ``name``'s present one was made from; NotPossible for a model as fitted."""
        with self._changing:
            current = self.choose(name)
            parent = current.parent
            if parent is None:
                raise NotPossible(f"{name!r} is served as fitted ({current.version}); there is no earlier version.")
            try:
                previous = self._load_version(name, parent, current.max_batch)
            except ModelFileError as error:
                raise NotPossible(f"Cannot roll {name!r} back: {error}") from error
            self.log.record_swap(previous.describe(), "rollback")
            self.models[name] = previous
            return previous

    # ------------------------------------------------------------------ inspecting
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


def _save_version(detector: Detector, root: Path) -> Path:
    """Save ``detector`` as ``root/<its content hash>/`` (written aside, then renamed into place: a reader never
    sees half a model) and return that directory."""
    root.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(dir=root, prefix=".incoming-"))
    try:
        detector.save(incoming)
        target = root / str(detector.version_)
        if target.exists():
            shutil.rmtree(incoming)
        else:
            incoming.rename(target)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    return target


def _encode(array: np.ndarray, image_format: str, **options: int) -> bytes:
    """The overlay as JPEG (a picture for people; 18x faster to encode than PNG), the bool mask as 1-bit PNG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _milliseconds_since(started: float) -> float:
    return round(1000 * (time.perf_counter() - started), 3)
