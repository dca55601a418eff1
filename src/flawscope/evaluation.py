"""``fs.evaluate``: score a labelled dataset once and compute every metric the literature reports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flawscope.data.datasets import DEFECTIVE, GOOD, ImageDataset, as_dataset
from flawscope.errors import DataError
from flawscope.metrics import (
    auroc,
    average_precision,
    balanced_accuracy,
    best_balanced_accuracy,
    box_iou,
    confusion_matrix,
    f1_max,
    mask_box,
    pixel_metrics,
    region_overlap_quantiles,
    roc_curve,
)
from flawscope.models.base import Detector


@dataclass
class Case:
    """One image kept for the report: its row, its pixels and its anomaly map."""

    row: dict[str, Any]
    image: np.ndarray
    anomaly_map: np.ndarray


@dataclass
class Report:
    """What :func:`evaluate` returns: ``metrics`` (JSON-ready), per-image ``rows``, ``curves`` and worst ``cases``."""

    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    cases: list[Case] = field(default_factory=list)

    def write_json(self, path: str | Path) -> Path:
        """Write ``metrics`` (and the per-image rows) as JSON."""
        path = Path(path)
        path.write_text(json.dumps({**self.metrics, "images": self.rows}, indent=2))
        return path

    def write_html(self, path: str | Path, title: str = "flawscope evaluation") -> Path:
        """Write a self-contained HTML report (ROC curves, score histograms, worst cases)."""
        from flawscope.report import write_html_report

        return write_html_report(self, Path(path), title)


class _WorstCases:
    """Keeps the ``count`` highest-scored good images and the ``count`` lowest-scored defective ones."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.kept: dict[bool, list[tuple[float, Case]]] = {True: [], False: []}

    def offer(self, row: dict[str, Any], image: np.ndarray, anomaly_map: np.ndarray) -> None:
        """Keep this image if it is among the worst so far."""
        is_good = row["label"] == GOOD
        badness = row["score"] if is_good else -row["score"]
        kept = self.kept[is_good]
        if self.count == 0 or (len(kept) == self.count and badness <= kept[-1][0]):
            return
        kept.append((badness, Case(row, image, anomaly_map)))
        kept.sort(key=lambda item: -item[0])
        del kept[self.count :]

    def cases(self) -> list[Case]:
        """Worst good images first, then worst defective ones, each worst first."""
        return [case for _, case in self.kept[True] + self.kept[False]]


def evaluate(
    model: Detector,
    data,
    *,
    max_fpr: float = 0.3,
    worst_cases: int = 6,
    progress: bool = True,
) -> Report:
    """Score ``data`` (labelled good and defective images, masks optional) and compute metrics.

    Image level: ``image_auroc``, ``image_aupr``, ``f1_max``, and at the model's calibrated
    threshold ``balanced_accuracy``, ``confusion_matrix`` ([[TN, FP], [FN, TP]]);
    ``balanced_accuracy_oracle`` is the best any threshold reaches on this data (what the
    calibrated threshold is measured against). An
    uncalibrated model is judged at the F1-optimal threshold on this data, and
    ``threshold_source`` says so. Where masks exist: ``pixel_auroc`` and ``aupro`` (up to
    ``max_fpr``), overall and per defect type, ``region_overlap``: the 25/50/75 % quantiles
    of the per-region overlap at false-positive rates 1-30 % (Bergmann et al. 2019, Fig. 7), and
    for a calibrated model ``box_iou_mean`` / ``box_iou_over_0_5``: the IoU of the box around the
    drawn boxes with the true mask's box, over the defective images (0 where none is drawn).
    Images that cannot be read are listed under
    ``failed`` and left out.
    """
    dataset = as_dataset(data, split="test")
    labels_known = dataset.labels
    if (labels_known < 0).any():
        raise DataError(f"{dataset!r} has unlabelled images; evaluate needs good/defective labels.")
    with_masks = _masks_given(dataset)
    rows: list[dict[str, Any]] = []
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    failed: dict[str, str] = {}
    worst = _WorstCases(worst_cases)
    for result in model.iter_predict(dataset, on_error="skip", progress=progress, description="evaluating"):
        sample, anomaly_map, image = result.sample, result.anomaly_map, result.image
        if anomaly_map is None or image is None:
            failed[sample.name] = str(result.error)
            continue
        row = {"name": sample.name, "label": sample.label, "defect_type": sample.defect_type, "score": result.score}
        rows.append(row)
        if with_masks:
            maps.append(anomaly_map)
            masks.append(sample.read_mask(anomaly_map.shape))
            if model.is_calibrated and sample.label == DEFECTIVE:
                row["box_iou"] = _box_iou(model, result.score, anomaly_map, masks[-1])
        worst.offer(row, image, anomaly_map)
    labels = np.array([row["label"] for row in rows])
    scores = np.array([row["score"] for row in rows])
    metrics, curves = _image_metrics(model, labels, scores)
    for row in rows:
        row["predicted_defective"] = bool(row["score"] > metrics["threshold"])
    metrics["failed"] = failed
    if with_masks:
        pixel = pixel_metrics(maps, masks, max_fpr)
        metrics.update(
            pixel_auroc=pixel["pixel_auroc"], aupro=pixel["aupro"], aupro_max_fpr=max_fpr, n_regions=pixel["n_regions"]
        )
        curves["pixel_roc"] = _as_lists(pixel["roc"])
        curves["pro"] = _as_lists(pixel["pro"])
        metrics["region_overlap"] = region_overlap_quantiles(maps, masks)
        ious = np.array([row["box_iou"] for row in rows if row.get("box_iou") is not None])
        if ious.size:
            metrics.update(
                box_iou_mean=float(ious.mean()),
                box_iou_over_0_5=float((ious >= 0.5).mean()),
                n_boxed_images=int(ious.size),
            )
    empty = [row["name"] for row, mask in zip(rows, masks) if row["label"] == DEFECTIVE and not mask.any()]
    if empty:
        metrics["notes"] = [
            f"{len(empty)} defective images have an empty mask ({', '.join(empty[:3])}"
            f"{', ...' if len(empty) > 3 else ''}): they count as defective in the image metrics, add only good "
            "pixels to the pixel metrics and no region to AUPRO."
        ]
    if not with_masks:
        metrics["notes"] = [
            f"{dataset!r} has no ground-truth masks: image metrics only (no pixel AUROC, AUPRO, region "
            "overlap or box IoU)."
        ]
    metrics["per_defect_type"] = _per_type(rows, maps if with_masks else None, masks if with_masks else None, max_fpr)
    return Report(metrics, rows, curves, worst.cases())


def _masks_given(dataset: ImageDataset) -> bool:
    """True when every defective image has a mask, False when none has; DataError for a mixture."""
    defective = [sample for sample in dataset.samples if sample.label == DEFECTIVE]
    missing = [sample for sample in defective if sample.mask is None]
    if missing and len(missing) < len(defective):
        raise DataError(
            f"Defective image {missing[0].name} has no mask while {len(defective) - len(missing)} others have one; "
            "give every defective image a mask, or none (image metrics only)."
        )
    return bool(defective) and not missing


def _box_iou(model: Detector, score: float, anomaly_map: np.ndarray, mask: np.ndarray) -> float | None:
    """IoU of the bounding box around all boxes the model draws with the bounding box of the true
    mask (0 when the image is passed as OK or no box is drawn; None without a true region)."""
    truth = mask_box(mask)
    if truth is None:
        return None
    defective, _, boxes = model.decide(score, anomaly_map)
    if not defective or not boxes:
        return 0.0
    drawn = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    return box_iou(drawn, truth)


def _as_lists(curve: tuple[np.ndarray, np.ndarray], points: int = 400) -> tuple[list[float], list[float]]:
    """A curve thinned to at most ``points`` points for JSON and plots."""
    x, y = curve
    keep = np.unique(np.linspace(0, len(x) - 1, min(points, len(x))).round().astype(int))
    return x[keep].tolist(), y[keep].tolist()


def _image_metrics(model: Detector, labels: np.ndarray, scores: np.ndarray) -> tuple[dict[str, Any], dict]:
    n_good, n_defective = int((labels == GOOD).sum()), int((labels == DEFECTIVE).sum())
    metrics: dict[str, Any] = {
        "model": model.name,
        "n_images": len(labels),
        "n_good": n_good,
        "n_defective": n_defective,
    }
    if n_good == 0 or n_defective == 0:
        raise DataError(f"evaluate needs good and defective images; got {n_good} good and {n_defective} defective.")
    best_f1, f1_threshold = f1_max(labels, scores)
    best_balanced, _ = best_balanced_accuracy(labels, scores)
    if model.threshold_ is not None:
        threshold, source = model.threshold_, f"calibrated ({model.calibration_.get('rule')})"
    else:
        threshold, source = f1_threshold, "F1-optimal on this data (model not calibrated)"
    predictions = scores > threshold
    fpr, tpr, _ = roc_curve(labels, scores)
    metrics.update(
        image_auroc=auroc(labels, scores),
        image_aupr=average_precision(labels, scores),
        f1_max=best_f1,
        threshold=float(threshold),
        threshold_source=source,
        balanced_accuracy=balanced_accuracy(labels, predictions),
        balanced_accuracy_oracle=best_balanced,
        accuracy=float((predictions == labels.astype(bool)).mean()),
        confusion_matrix=confusion_matrix(labels, predictions),
    )
    return metrics, {"image_roc": _as_lists((fpr, tpr))}


def _per_type(rows, maps, masks, max_fpr) -> dict[str, dict[str, float]]:
    types = sorted({row["defect_type"] for row in rows if row["label"] == DEFECTIVE})
    good = [i for i, row in enumerate(rows) if row["label"] == GOOD]
    per_type: dict[str, dict[str, float]] = {}
    for defect_type in types:
        chosen = good + [
            i for i, row in enumerate(rows) if row["defect_type"] == defect_type and row["label"] == DEFECTIVE
        ]
        labels = np.array([rows[i]["label"] for i in chosen])
        scores = np.array([rows[i]["score"] for i in chosen])
        entry: dict[str, float] = {}
        if good:
            entry.update(n_images=int((labels == DEFECTIVE).sum()), image_auroc=auroc(labels, scores))
        if maps is not None:
            pixel = pixel_metrics([maps[i] for i in chosen], [masks[i] for i in chosen], max_fpr)
            entry.update(pixel_auroc=pixel["pixel_auroc"], aupro=pixel["aupro"])
        per_type[defect_type] = entry
    return per_type
