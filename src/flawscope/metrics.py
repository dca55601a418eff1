"""Evaluation metrics as used in the anomaly-detection literature.

Image level: AUROC, AUPR (average precision), F1-max, balanced accuracy and the confusion
matrix at a threshold. Pixel level: pixel AUROC and AUPRO, the per-region-overlap curve of the
MVTec AD evaluation (Bergmann et al. 2021) integrated up to 30 % false-positive rate and divided
by 0.3. Every function takes labels where 1 = defective and scores where higher = more anomalous.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from flawscope.errors import DataError


def _check_binary(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    label_array = np.asarray(labels).ravel()
    score_array = np.asarray(scores, dtype=np.float64).ravel()
    if label_array.shape != score_array.shape:
        raise DataError(f"Got {label_array.size} labels but {score_array.size} scores.")
    if not np.isfinite(score_array).all():
        raise DataError("Scores contain NaN or infinity.")
    positives = label_array == 1
    if positives.all() or not positives.any():
        raise DataError("A curve metric needs both good (0) and defective (1) samples.")
    return positives, score_array


def _sorted_counts(positives: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None):
    """Cumulative true/false positives at each distinct threshold, from the highest score down."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_positive = positives[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_pos = np.cumsum(sorted_positive, dtype=np.float64)[last_of_value]
    false_pos = (last_of_value + 1) - true_pos
    weighted = None if weights is None else np.cumsum(weights[order], dtype=np.float64)[last_of_value]
    return true_pos, false_pos, sorted_scores[last_of_value], weighted


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, starting at (0, 0); a sample is positive when score >= threshold."""
    positives, score_array = _check_binary(labels, scores)
    true_pos, false_pos, thresholds, _ = _sorted_counts(positives, score_array)
    fpr = np.r_[0.0, false_pos / false_pos[-1]]
    tpr = np.r_[0.0, true_pos / true_pos[-1]]
    return fpr, tpr, np.r_[np.inf, thresholds]


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the precision-recall curve as the step sum ``sum (R_n - R_{n-1}) P_n``."""
    positives, score_array = _check_binary(labels, scores)
    true_pos, false_pos, _, _ = _sorted_counts(positives, score_array)
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """``(best F1, threshold)`` over all thresholds; predict defective when ``score > threshold``."""
    positives, score_array = _check_binary(labels, scores)
    true_pos, false_pos, thresholds, _ = _sorted_counts(positives, score_array)
    f1 = 2 * true_pos / (true_pos + false_pos + true_pos[-1])
    best = int(np.argmax(f1))
    lower = thresholds[best + 1] if best + 1 < thresholds.size else -np.inf
    threshold = 0.5 * (thresholds[best] + lower) if np.isfinite(lower) else np.nextafter(thresholds[best], -np.inf)
    return float(f1[best]), float(threshold)


def confusion_matrix(labels: ArrayLike, predictions: ArrayLike) -> list[list[int]]:
    """``[[TN, FP], [FN, TP]]`` (rows: true good, true defective; columns: predicted)."""
    truth = np.asarray(labels).astype(bool).ravel()
    predicted = np.asarray(predictions).astype(bool).ravel()
    return [
        [int(np.sum(~truth & ~predicted)), int(np.sum(~truth & predicted))],
        [int(np.sum(truth & ~predicted)), int(np.sum(truth & predicted))],
    ]


def balanced_accuracy(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Mean of the recall on good and on defective samples."""
    (tn, fp), (fn, tp) = confusion_matrix(labels, predictions)
    if tn + fp == 0 or fn + tp == 0:
        raise DataError("Balanced accuracy needs both good and defective samples.")
    return 0.5 * (tn / (tn + fp) + tp / (fn + tp))


def best_balanced_accuracy(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """``(best balanced accuracy, its threshold)`` over all thresholds (defective when ``score > threshold``):
    the "oracle" a threshold chosen on this very data reaches -- an upper bound for a calibrated one."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    balanced = 0.5 * (tpr + 1.0 - fpr)
    best = int(np.argmax(balanced))
    # roc_curve's thresholds count ``score >= t`` as defective: the threshold just below t does the same for ">"
    threshold = np.nextafter(thresholds[best], -np.inf) if np.isfinite(thresholds[best]) else np.inf
    return float(balanced[best]), float(threshold)


EXACT_PIXEL_LIMIT = 1 << 22  # up to ~4 M pixels the curves use every distinct score
PIXEL_BINS = 1 << 16


def pixel_metrics(
    anomaly_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], max_fpr: float = 0.3
) -> dict[str, Any]:
    """Pixel AUROC and AUPRO over all pixels of all images (each map at its mask's size).

    AUPRO follows the MVTec AD evaluation: connected components (8-connectivity) of every
    ground-truth mask are the regions; at each threshold the per-region overlap (PRO) is the
    mean over regions of the fraction of the region's pixels above the threshold, and the
    false-positive rate is the fraction of all defect-free pixels above it. The PRO curve is
    integrated over FPR in ``[0, max_fpr]`` (interpolated at ``max_fpr``) and divided by
    ``max_fpr``.

    Up to ``EXACT_PIXEL_LIMIT`` pixels every distinct score is a threshold. Beyond that, memory
    would grow to several GB, so the thresholds are the ``PIXEL_BINS`` quantiles of every 16th
    pixel and the counts are accumulated image by image; pixels that share a bin count as tied
    (the AUROC error this causes is below 1e-4 for smooth maps).

    Returns
    -------
    dict
        ``pixel_auroc``, ``aupro``, ``n_regions``, ``exact`` and the curves ``roc`` = (fpr, tpr)
        and ``pro`` = (fpr, pro) for plotting.
    """
    if len(anomaly_maps) != len(masks):
        raise DataError(f"Got {len(anomaly_maps)} anomaly maps but {len(masks)} masks.")
    for index, (anomaly_map, mask) in enumerate(zip(anomaly_maps, masks)):
        if anomaly_map.shape != mask.shape:
            raise DataError(f"Anomaly map {index} has shape {anomaly_map.shape} but its mask {mask.shape}.")
    exact = sum(m.size for m in anomaly_maps) <= EXACT_PIXEL_LIMIT
    counts = _exact_pixel_counts if exact else _binned_pixel_counts
    true_pos, false_pos, overlap, n_regions = counts(anomaly_maps, masks)
    if n_regions == 0:
        raise DataError("Pixel metrics need at least one defective pixel in the masks.")
    overlap = overlap / n_regions
    fpr = np.r_[0.0, false_pos / false_pos[-1]]
    tpr = np.r_[0.0, true_pos / true_pos[-1]]
    pro = np.r_[0.0, overlap]
    return {
        "pixel_auroc": float(np.trapezoid(tpr, fpr)),
        "aupro": integrate_to(fpr, pro, max_fpr) / max_fpr,
        "n_regions": n_regions,
        "exact": exact,
        "roc": (fpr, tpr),
        "pro": (fpr, pro),
    }


OVERLAP_FPRS = (0.01, 0.05, 0.1, 0.2, 0.3)
OVERLAP_QUANTILES = (0.25, 0.5, 0.75)


def region_overlap_quantiles(
    anomaly_maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    fprs: Sequence[float] = OVERLAP_FPRS,
    quantiles: Sequence[float] = OVERLAP_QUANTILES,
) -> dict[str, object]:
    """Per-region overlap at chosen false-positive rates, as in Bergmann et al. (2019), Figure 7.

    For each rate the threshold is the ``1 - fpr`` quantile of the scores of all defect-free
    pixels; each ground-truth region (8-connected component of a mask) gets the fraction of its
    pixels above the threshold, and the ``quantiles`` of those fractions over all regions are
    reported (no morphological post-processing, so any method is judged alike).

    Returns
    -------
    dict
        ``fpr`` (the rates), ``quantiles``, ``thresholds``, ``overlap`` -- one list per quantile,
        one value per rate -- and ``n_regions``.
    """
    normal = np.concatenate(
        [np.asarray(m, dtype=np.float32)[~np.asarray(k, dtype=bool)] for m, k in zip(anomaly_maps, masks)]
    )
    if normal.size == 0:
        raise DataError("Region overlap needs defect-free pixels to set its thresholds.")
    thresholds = np.quantile(normal, 1.0 - np.asarray(fprs, dtype=np.float64))
    overlaps: list[np.ndarray] = []
    for anomaly_map, mask in zip(anomaly_maps, masks):
        regions, count = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), dtype=bool))
        if count == 0:
            continue
        sizes = np.bincount(regions.ravel(), minlength=count + 1)[1:]
        above = np.asarray(anomaly_map, dtype=np.float32).ravel()[None, :] > thresholds[:, None]  # F x pixels
        hits = np.stack([np.bincount(regions.ravel(), weights=row, minlength=count + 1)[1:] for row in above])
        overlaps.append(hits / sizes)  # F x regions
    if not overlaps:
        raise DataError("Region overlap needs at least one defective pixel in the masks.")
    per_region = np.concatenate(overlaps, axis=1)
    return {
        "fpr": [float(f) for f in fprs],
        "quantiles": [float(q) for q in quantiles],
        "thresholds": thresholds.tolist(),
        "overlap": np.quantile(per_region, quantiles, axis=1).tolist(),
        "n_regions": int(per_region.shape[1]),
    }


def _region_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Each pixel's 1 / (size of its 8-connected defect region), 0 outside regions; and the region count."""
    regions, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(regions.ravel(), minlength=count + 1).astype(np.float64)
    inverse_size = np.zeros_like(sizes)
    inverse_size[1:] = 1.0 / sizes[1:]
    return inverse_size[regions].ravel(), count


def _exact_pixel_counts(anomaly_maps, masks):
    scores = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in anomaly_maps])
    positives = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in masks])
    weights, counts = zip(*(_region_weights(mask) for mask in masks))
    true_pos, false_pos, _, overlap = _sorted_counts(positives, scores, np.concatenate(weights))
    return true_pos, false_pos, overlap, sum(counts)


def _binned_pixel_counts(anomaly_maps, masks):
    sample = np.concatenate([np.asarray(m, dtype=np.float32).ravel()[::16] for m in anomaly_maps])
    edges = np.unique(np.quantile(sample, np.linspace(0.0, 1.0, PIXEL_BINS + 1)[1:-1]))
    n_bins = edges.size + 1
    positive_count, total_count, overlap_sum, n_regions = np.zeros(n_bins), np.zeros(n_bins), np.zeros(n_bins), 0
    for anomaly_map, mask in zip(anomaly_maps, masks):
        bins = np.searchsorted(edges, np.asarray(anomaly_map, dtype=np.float32).ravel(), side="right")
        weights, count = _region_weights(mask)
        total_count += np.bincount(bins, minlength=n_bins)
        positive_count += np.bincount(bins[np.asarray(mask, dtype=bool).ravel()], minlength=n_bins)
        overlap_sum += np.bincount(bins, weights=weights, minlength=n_bins)
        n_regions += count
    # from the highest bin down, as thresholds from the highest score down; empty bins add no point
    occupied = total_count[::-1] > 0
    true_pos = np.cumsum(positive_count[::-1])[occupied]
    false_pos = np.cumsum(total_count[::-1] - positive_count[::-1])[occupied]
    return true_pos, false_pos, np.cumsum(overlap_sum[::-1])[occupied], n_regions


def integrate_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid integral of the curve ``y(x)`` (x non-decreasing) from ``x[0]`` to ``x_max``."""
    inside = x <= x_max
    xs, ys = x[inside], y[inside]
    if xs[-1] < x_max:
        after = np.flatnonzero(~inside)[0]
        y_at = np.interp(x_max, [x[after - 1], x[after]], [y[after - 1], y[after]])
        xs, ys = np.r_[xs, x_max], np.r_[ys, y_at]
    return float(np.trapezoid(ys, xs))


def box_iou(first: tuple[int, int, int, int], second: tuple[int, int, int, int]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (x1, y1 exclusive)."""
    width = max(0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0, min(first[3], second[3]) - max(first[1], second[1]))
    intersection = width * height
    union = _area(first) + _area(second) - intersection
    return intersection / union if union > 0 else 0.0


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The bounding box ``(x0, y0, x1, y1)`` of a mask's true pixels, or None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])
