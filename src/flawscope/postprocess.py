"""Shared post-processing of anomaly maps, in numpy: thresholds, masks and boxes (no torch: the exported-model
runtime uses it too; the torch map operations are in :mod:`flawscope.maps`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flawscope.errors import ConfigError, DataError

THRESHOLD_RULES = ("sigma", "fpr", "f1")


@dataclass(frozen=True)
class ThresholdRule:
    """How a threshold is set from calibration scores (see :func:`threshold_from_scores`): ``fpr`` (the
    ``1 - target_fpr`` quantile of the good scores), ``sigma`` (mean + ``k`` standard deviations of the
    good scores) or ``f1`` (best F1; needs defective images too).

    The default, ``fpr`` at 5 %, was chosen on parts never seen in training (``docs/results.md``): on
    ELPV split by module, magnetic tile split by tile and bsdata split by position, PatchCore's and
    PaDiM's balanced accuracy at it came within 0.06 of the best threshold chosen on the test data
    itself, on average, against 0.10 for mean + 3 std.
    """

    rule: str = "fpr"
    k: float = 3.0
    target_fpr: float = 0.05

    def with_changes(self, rule: str | None, k: float | None, target_fpr: float | None) -> ThresholdRule:
        """This rule with the given fields (None keeps this rule's)."""
        return ThresholdRule(
            self.rule if rule is None else rule,
            self.k if k is None else k,
            self.target_fpr if target_fpr is None else target_fpr,
        )


Box = tuple[int, int, int, int, float]


def threshold_from_scores(
    scores: np.ndarray,
    rule: str = "sigma",
    k: float = 3.0,
    target_fpr: float = 0.01,
    labels: np.ndarray | None = None,
) -> float:
    """A decision threshold (score > threshold means NOT OK) from validation scores.

    * ``sigma``: mean + ``k`` standard deviations of the good scores (no defective images needed).
    * ``fpr``: the ``1 - target_fpr`` quantile of the good scores.
    * ``f1``: the threshold of best F1 (needs good and defective images).

    ``labels`` (0 good, 1 defective) selects the good scores for ``sigma`` and ``fpr``; without
    labels every score is taken to be good.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if rule not in THRESHOLD_RULES:
        raise ConfigError(f"The threshold rule must be one of {THRESHOLD_RULES}. Got {rule!r} instead.")
    if labels is None:
        labels = np.zeros(len(scores), dtype=np.int64)
    labels = np.asarray(labels)
    good = scores[labels == 0]
    if rule == "f1":
        from flawscope.metrics import f1_max

        if not (labels == 1).any() or good.size == 0:
            raise DataError("The 'f1' threshold rule needs both good and defective validation images.")
        return f1_max(labels, scores)[1]
    if good.size < 2:
        raise DataError(f"Calibration needs at least 2 good images; got {good.size}.")
    if rule == "sigma":
        if k <= 0:
            raise ConfigError(f"k must be positive for the 'sigma' rule. Got {k} instead.")
        return float(good.mean() + k * good.std(ddof=1))
    if not 0.0 < target_fpr < 1.0:
        raise ConfigError(f"target_fpr must be in (0, 1). Got {target_fpr} instead.")
    return float(np.quantile(good, 1.0 - target_fpr))


CONFIDENCE = 0.95


def false_alarm_statement(
    good_scores: np.ndarray, threshold: float, rule: str, k: float, target_fpr: float
) -> dict[str, float | int | list[float] | None]:
    """What a threshold promises on good parts, in false alarms.

    ``aimed_fpr``: the false-alarm rate the rule aims at -- ``target_fpr`` for ``fpr``, the normal
    tail ``1 - Phi(k)`` for ``sigma`` (exact only if good scores were Gaussian), None for ``f1``.
    ``false_alarms`` of the ``n_good`` calibration scores lie above the threshold; ``fpr_interval``
    is the exact (Clopper-Pearson) interval at :data:`CONFIDENCE` for the rate on new good parts
    like them -- as wide as the number of calibration images forces it to be.
    """
    from scipy.stats import beta, norm

    good = np.asarray(good_scores, dtype=np.float64)
    n_good = int(good.size)
    alarms = int((good > threshold).sum())
    tail = (1.0 - CONFIDENCE) / 2
    low = 0.0 if alarms == 0 else float(beta.ppf(tail, alarms, n_good - alarms + 1))
    high = 1.0 if alarms == n_good else float(beta.ppf(1 - tail, alarms + 1, n_good - alarms))
    aimed = {"sigma": float(norm.sf(k)), "fpr": float(target_fpr)}.get(rule)
    return {
        "aimed_fpr": aimed,
        "n_good": n_good,
        "false_alarms": alarms,
        "observed_fpr": alarms / n_good if n_good else float("nan"),
        "fpr_interval": [low, high],
        "confidence": CONFIDENCE,
    }


def describe_false_alarms(statement: dict) -> str:
    """One line a person reads: what the rule aims at and what the calibration images show."""
    low, high = statement["fpr_interval"]
    aimed = statement["aimed_fpr"]
    line = "" if aimed is None else f"aims at {aimed:.2%} false alarms; "
    return line + (
        f"{statement['false_alarms']} of {statement['n_good']} good calibration images above it: "
        f"false-alarm rate {low:.1%}-{high:.1%} ({statement['confidence']:.0%} confidence)"
    )


def unsupported_rule(statement: dict) -> str | None:
    """Why the calibration set cannot support the rule's aim, or None: with fewer good images than one
    expected false alarm at the aimed rate, the threshold is set by the few highest scores and the rate
    it gives on new parts is unknown within the interval."""
    aimed = statement["aimed_fpr"]
    if aimed is None or statement["n_good"] * aimed >= 1.0:
        return None
    needed = int(np.ceil(1.0 / aimed))
    return (
        f"{statement['n_good']} good calibration images cannot show a false-alarm rate of {aimed:.2%} "
        f"(that takes at least {needed}): on new parts the rate may be anywhere in "
        f"{statement['fpr_interval'][0]:.1%}-{statement['fpr_interval'][1]:.1%}. Give more good images from "
        "parts not used in training, or aim at a higher rate (rule='fpr', target_fpr=...)."
    )


OPENING_SHAPES = ("square", "disk")


def structuring_element(size: int, shape: str = "square") -> np.ndarray:
    """Bool ``size x size`` element: a full square, or the pixels of a disk of diameter ``size``
    (centres within ``size / 2`` of the element's centre; diameter 4 = a 4 x 4 square without its corners)."""
    if shape not in OPENING_SHAPES:
        raise ConfigError(f"The opening shape must be one of {OPENING_SHAPES}. Got {shape!r} instead.")
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    offsets = np.arange(size) - (size - 1) / 2.0
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= (size / 2.0) ** 2


def segment(anomaly_map: np.ndarray, threshold: float, opening: int = 3, shape: str = "square") -> np.ndarray:
    """Bool mask of ``anomaly_map > threshold``, opened with a ``shape`` of size ``opening`` (0 or 1 = none)."""
    mask = anomaly_map > threshold
    if opening > 1 and mask.any():
        mask = ndimage.binary_opening(mask, structure=structuring_element(opening, shape))
    return mask


def boxes_from_mask(mask: np.ndarray, anomaly_map: np.ndarray) -> list[Box]:
    """One ``(x0, y0, x1, y1, score)`` box per 8-connected region (x1, y1 exclusive), highest score first."""
    regions, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    boxes: list[Box] = []
    for index, region in enumerate(ndimage.find_objects(regions), start=1):
        if region is None:
            continue
        rows, cols = region
        boxes.append((cols.start, rows.start, cols.stop, rows.stop, _region_peak(anomaly_map, regions, region, index)))
    return sorted(boxes, key=lambda box: -box[4])


def _region_peak(anomaly_map: np.ndarray, regions: np.ndarray, region: tuple[slice, slice], index: int) -> float:
    """The largest value of ``anomaly_map`` in region ``index`` (its bounding box ``region``), gathered
    ``_PEAK_BAND_ROWS`` rows at a time: a region as large as an 8,192 px image never copies all its values."""
    rows, cols = region
    peak = -np.inf
    for top in range(rows.start, rows.stop, _PEAK_BAND_ROWS):
        band = (slice(top, min(top + _PEAK_BAND_ROWS, rows.stop)), cols)
        peak = max(peak, float(anomaly_map[band][regions[band] == index].max(initial=-np.inf)))
    return peak


_PEAK_BAND_ROWS = 512
