"""The prediction loop every scorer shares -- a fitted :class:`~flawscope.models.base.Detector` and an
exported model in :mod:`flawscope.runtime` alike: reading images a batch at a time, skipping or raising on
unreadable ones, and turning scores and maps into labels, masks and boxes at the calibrated thresholds.

No torch here: a scorer supplies ``_score_pixels`` (images as read -> a score and a map at each image's own
size) and the rest is this module's.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from flawscope._progress import progress_bar
from flawscope.data.datasets import DEFECTIVE, GOOD, ImageDataset, Sample, as_dataset
from flawscope.data.io import load_image
from flawscope.errors import CalibrationWarning, ConfigError, DataError, NotFittedError
from flawscope.postprocess import (
    Box,
    ThresholdRule,
    boxes_from_mask,
    false_alarm_statement,
    segment,
    threshold_from_scores,
    unsupported_rule,
)
from flawscope.results import Prediction, ScoredImage
from flawscope.tiling import Tiling, score_in_tiles

ScorerT = TypeVar("ScorerT", bound="Scorer")


class Scorer:
    """Prediction from images to scores, maps and -- once calibrated -- labels, masks and boxes.

    A subclass sets ``batch_size``, ``threshold_``, ``pixel_threshold_`` (None until calibrated) and
    ``calibration_``, ``default_opening`` / ``opening_shape`` / ``default_threshold``, and implements
    ``_check_fitted`` and ``_score_pixels``.
    """

    # how predicted masks are opened unless ``predict`` is told otherwise: a structuring element
    # of this shape ("square" or "disk") and size
    opening_shape: str = "square"
    default_opening: int = 3
    # how calibrate sets the threshold unless told otherwise
    default_threshold: ThresholdRule = ThresholdRule()

    batch_size: int
    threshold_: float | None
    pixel_threshold_: float | None
    calibration_: dict[str, Any]

    def _check_fitted(self) -> None:
        raise NotImplementedError

    def _score_pixels(self, pixels: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        """Images as read (float ``H x W x C``) -> ``(score, anomaly map at the image's own size)`` each."""
        raise NotImplementedError

    def _check_image(self, image: np.ndarray) -> None:
        """DataError for an image, as read, this scorer cannot score (handled like an unreadable one)."""

    def _tiling(self) -> Tiling | None:
        return None

    @property
    def tiling(self) -> Tiling | None:
        """How this scorer cuts images into tiles (:mod:`flawscope.tiling`); None when it scores them whole."""
        return self._tiling()

    def _score_readable(
        self, pixels: list[np.ndarray], tiling: Tiling | None, tile_batch: int
    ) -> list[tuple[float, np.ndarray]]:
        """:meth:`_score_pixels` of whole images, or of each image's tiles, ``tile_batch`` at a time, blended."""
        if tiling is None:
            return self._score_pixels(pixels)
        return [score_in_tiles(self._score_pixels, image, tiling, tile_batch) for image in pixels]

    @property
    def is_calibrated(self) -> bool:
        return getattr(self, "threshold_", None) is not None

    def calibrate(
        self: ScorerT,
        images: ImageDataset | Sequence | str,
        *,
        rule: str | None = None,
        k: float | None = None,
        target_fpr: float | None = None,
        progress: bool = True,
    ) -> ScorerT:
        """Set the OK / NOT OK threshold from validation images; returns self.

        ``fpr``: the score quantile giving ``target_fpr`` false alarms on the good images.
        ``sigma``: mean + k std of the good images' scores. ``f1``: best F1, needs labelled good
        and defective images. What is not given comes from the method's ``default_threshold``
        (:class:`~flawscope.postprocess.ThresholdRule`: ``fpr`` at 5 %; the MSE autoencoder's
        recipe: ``sigma`` with k = 3). The same rule on the per-image maxima of
        the anomaly maps gives the pixel threshold used for masks and boxes.

        ``calibration_`` keeps the good images' scores (``good_scores``, what a later drift check
        compares new parts against) and says, in false alarms, what the threshold promises
        (:func:`flawscope.postprocess.false_alarm_statement`: the rate the rule aims at, how many
        good calibration images lie above it, and the 95 % interval of the rate on new good
        parts); a :class:`~flawscope.errors.CalibrationWarning` says when there are too few good
        images to show the rate the rule aims at. Calibrate on good images of parts the model was
        not fitted on: images of the training parts score low and give a threshold new parts exceed.
        """
        self._check_fitted()
        dataset = as_dataset(images, split="test")
        scores, map_maxima = self._scores_and_map_maxima(dataset, progress)
        labels = np.clip(dataset.labels, 0, 1)
        chosen = self.default_threshold.with_changes(rule, k, target_fpr)
        return self._set_thresholds(scores, map_maxima, labels, chosen, "held-out images")

    def recalibrate(
        self: ScorerT,
        good: ImageDataset | Sequence | str,
        defective: ImageDataset | Sequence | str = (),
        *,
        progress: bool = True,
    ) -> ScorerT:
        """Set the thresholds again from operator verdicts: images confirmed good and, where there are any,
        images confirmed defective; returns self.

        With good images only, the rule this scorer was calibrated with (its ``calibration_``; the method's
        ``default_threshold`` when it was never calibrated or was last calibrated by F1) sets the threshold
        on their scores; with both kinds, the best-F1 rule. ``calibration_`` records the rule, that the scores
        came from verdicts, and how many good (``n_images - n_defective``) and defective images it saw.
        """
        self._check_fitted()
        verdicts = [
            dataclasses.replace(sample, label=label)
            for images, label in ((good, GOOD), (defective, DEFECTIVE))
            for sample in (as_dataset(images, split="test").samples if _given(images) else [])
        ]
        n_good = sum(sample.label == GOOD for sample in verdicts)
        if n_good == 0:
            raise DataError("recalibrate needs at least 1 image confirmed good.")
        dataset = ImageDataset(verdicts, f"verdicts ({n_good} good, {len(verdicts) - n_good} defective)")
        scores, map_maxima = self._scores_and_map_maxima(dataset, progress)
        saved = getattr(self, "calibration_", None) or {}
        chosen = self.default_threshold
        if saved.get("rule") in ("fpr", "sigma"):
            chosen = chosen.with_changes(saved["rule"], saved.get("k"), saved.get("target_fpr"))
        if n_good < len(verdicts):
            chosen = chosen.with_changes("f1", None, None)
        return self._set_thresholds(scores, map_maxima, dataset.labels, chosen, "operator verdicts")

    def _scores_and_map_maxima(self, dataset: ImageDataset, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        scores, map_maxima = [], []
        for result in self.iter_predict(dataset, progress=progress, description="calibrating"):
            assert result.anomaly_map is not None  # on_error="raise": every image was scored
            scores.append(result.score)
            map_maxima.append(float(result.anomaly_map.max()))
        return np.array(scores), np.array(map_maxima)

    def _set_thresholds(
        self: ScorerT,
        scores: np.ndarray,
        map_maxima: np.ndarray,
        labels: np.ndarray,
        chosen: ThresholdRule,
        source: str,
    ) -> ScorerT:
        """The image and pixel thresholds of ``chosen`` on these scores, with what they promise in false alarms."""
        rule, k, target_fpr = chosen.rule, chosen.k, chosen.target_fpr
        self.threshold_ = threshold_from_scores(scores, rule, k, target_fpr, labels)
        self.pixel_threshold_ = threshold_from_scores(map_maxima, rule, k, target_fpr, labels)
        statement = false_alarm_statement(scores[labels == 0], self.threshold_, rule, k, target_fpr)
        self.calibration_ = {
            "rule": rule,
            "k": k,
            "target_fpr": target_fpr,
            "scores_from": source,
            "n_images": len(scores),
            "n_defective": int((labels == 1).sum()),
            **statement,
            "good_scores": [float(score) for score in scores[labels == 0]],
        }
        problem = unsupported_rule(statement)
        if problem is not None:
            warnings.warn(f"{type(self).__name__}: {problem}", CalibrationWarning, stacklevel=3)
        return self

    def iter_predict(
        self,
        images: ImageDataset | Sequence | str,
        *,
        batch_size: int | None = None,
        on_error: str = "raise",
        progress: bool = True,
        description: str = "scoring",
    ) -> Iterator[ScoredImage]:
        """Score images one batch at a time, yielding one :class:`ScoredImage` per input, in order.

        Memory stays bounded by one batch. With ``on_error="skip"`` an unreadable image yields a
        result with ``error`` set instead of stopping the run. A tiled scorer reads one image at a time and
        scores ``batch_size`` of its tiles per pass.
        """
        self._check_fitted()
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip'. Got {on_error!r} instead.")
        dataset = as_dataset(images, split="test")
        tiling = self._tiling()
        size = batch_size or self.batch_size
        images_per_pass = 1 if tiling is not None else size
        with progress_bar(description, len(dataset), progress) as bar:
            for start in range(0, len(dataset), images_per_pass):
                chunk = dataset.samples[start : start + images_per_pass]
                yield from self._predict_chunk(chunk, on_error, tiling, size)
                bar.advance(len(chunk))

    def _predict_chunk(
        self, chunk: list[Sample], on_error: str, tiling: Tiling | None, tile_batch: int
    ) -> Iterator[ScoredImage]:
        results: list[ScoredImage | None] = [None] * len(chunk)
        pixels, readable, conversions = [], [], []
        for position, sample in enumerate(chunk):
            try:
                loaded = load_image(sample.image, eight_bit=tiling is not None)  # tiles convert to floats in turn
                if tiling is not None:
                    tiling.check(loaded.pixels.shape[0], loaded.pixels.shape[1], sample.name)
                self._check_image(loaded.pixels)
                pixels.append(loaded.pixels)
                conversions.append(loaded.conversion)
                readable.append(position)
            except DataError as error:
                if on_error == "raise":
                    raise
                results[position] = ScoredImage(sample, error=str(error))
        if pixels:
            scored = zip(readable, pixels, conversions, self._score_readable(pixels, tiling, tile_batch))
            for position, image, conversion, (score, anomaly_map) in scored:
                results[position] = ScoredImage(chunk[position], score, anomaly_map, image=image, conversion=conversion)
        yield from (result for result in results if result is not None)

    def predict(
        self,
        images: ImageDataset | Sequence | str,
        *,
        batch_size: int | None = None,
        opening: int | None = None,
        on_error: str = "raise",
        progress: bool = True,
    ) -> Prediction:
        """Score images: scores, anomaly maps at each image's size, and -- once calibrated -- labels, masks, boxes.

        ``opening`` is the size of the structuring element (``opening_shape``) that opens the
        thresholded map; ``None`` = the method's ``default_opening``, 0 = none.
        """
        names, scores, maps, errors, conversions = self._collect(
            self.iter_predict(images, batch_size=batch_size, on_error=on_error, progress=progress)
        )
        score_array = np.asarray(scores, dtype=np.float64)
        if not self.is_calibrated:
            return Prediction(names, score_array, maps, errors=errors, conversions=conversions)
        decisions = [self.decide(score, anomaly_map, opening) for score, anomaly_map in zip(scores, maps)]
        labels = np.array([label for label, _, _ in decisions], dtype=bool)
        masks = [mask for _, mask, _ in decisions]
        boxes = [box for _, _, box in decisions]
        return Prediction(names, score_array, maps, labels, masks, boxes, self.threshold_, errors, conversions)

    @staticmethod
    def _collect(
        results: Iterator[ScoredImage],
    ) -> tuple[list[str], list[float], list[np.ndarray], dict[str, str], dict[str, str]]:
        """Names, scores and maps of the scored results, and the errors and conversions by name -- in a frame of its
        own, so that no result (and the image it holds: 800 MB for a large colour one) outlives the loop."""
        names, scores, maps, errors, conversions = [], [], [], {}, {}
        for result in results:
            if result.anomaly_map is None:
                errors[result.sample.name] = str(result.error)
                continue
            if result.conversion:
                conversions[result.sample.name] = result.conversion
            names.append(result.sample.name)
            scores.append(float(result.score))
            maps.append(result.anomaly_map)
        return names, scores, maps, errors, conversions

    def decide(
        self, score: float, anomaly_map: np.ndarray, opening: int | None = None
    ) -> tuple[bool, np.ndarray, list[Box]]:
        """``(NOT OK?, defect mask, boxes)`` for one scored image, at the calibrated thresholds."""
        threshold, pixel_threshold = self._thresholds()
        size = self.default_opening if opening is None else opening
        mask = segment(anomaly_map, pixel_threshold, size, self.opening_shape)
        return bool(score > threshold), mask, boxes_from_mask(mask, anomaly_map)

    def _thresholds(self) -> tuple[float, float]:
        """``(image threshold, pixel threshold)``; NotFittedError when not calibrated."""
        if self.threshold_ is None or self.pixel_threshold_ is None:
            raise NotFittedError(
                f"This {type(self).__name__} instance is not calibrated yet. Call 'calibrate' with good "
                "validation images to set the OK / NOT OK threshold."
            )
        return self.threshold_, self.pixel_threshold_


def _given(images: ImageDataset | Sequence | str) -> bool:
    """False for an empty list of images (none given); a folder or dataset always counts as given."""
    return isinstance(images, (str, os.PathLike, ImageDataset)) or len(images) > 0


__all__ = ["Scorer"]
