"""Scoring files and folders into a folder: a heat-map overlay and a defect mask per image and one
``predictions.csv`` -- for a fitted detector and an exported model alike (no torch here)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from flawscope.data.datasets import ImageDataset, Sample, list_images
from flawscope.errors import DataError
from flawscope.report import heatmap_overlay, overlay_scale
from flawscope.scoring import Scorer


@dataclass
class FolderPrediction:
    """What :func:`predict_to_folder` wrote: ``predictions.csv`` and how many images it scored or could not read."""

    csv_path: Path
    n_scored: int
    failed: dict[str, str]


def predict_to_folder(
    detector: Scorer,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    opening: int | None = None,
    progress: bool = True,
) -> FolderPrediction:
    """Score image files and folders of images; write per image a heat-map overlay, a defect mask (calibrated
    models) and a row of ``out/predictions.csv``. Unreadable files get a row with the reason and the rest go on."""
    paths = image_paths(inputs)
    if not paths:
        raise DataError(f"No images found in {', '.join(map(str, inputs))}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    failed: dict[str, str] = {}
    dataset = ImageDataset([Sample(path, str(path)) for path in paths], "inputs")
    csv_path = out / "predictions.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "label", "boxes", "overlay", "mask", "error"])
        for result in detector.iter_predict(dataset, on_error="skip", progress=progress):
            if result.anomaly_map is None or result.image is None:
                failed[result.sample.name] = str(result.error)
                writer.writerow([result.sample.name, "", "", "", "", "", result.error])
                continue
            stem = _unique_stem(result.sample.name, used)
            overlay_path = out / f"{stem}_overlay.png"
            low, high = overlay_scale(detector, result.anomaly_map)
            Image.fromarray(heatmap_overlay(result.image, result.anomaly_map, vmax=high, vmin=low)).save(overlay_path)
            label, boxes, mask_name = "", "", ""
            if detector.is_calibrated:
                not_ok, mask, found = detector.decide(result.score, result.anomaly_map, opening)
                label = "NOT OK" if not_ok else "OK"
                boxes = json.dumps([[int(v) for v in box[:4]] + [round(box[4], 4)] for box in found])
                mask_name = f"{stem}_mask.png"
                Image.fromarray((mask * 255).astype(np.uint8)).save(out / mask_name)
            writer.writerow([result.sample.name, f"{result.score:.6f}", label, boxes, overlay_path.name, mask_name, ""])
    return FolderPrediction(csv_path, len(paths) - len(failed), failed)


def image_paths(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files as given, and the images inside each folder given, in order."""
    return [path for item in map(Path, inputs) for path in (list_images(item) if item.is_dir() else [item])]


def _unique_stem(path_name: str, used: set[str]) -> str:
    stem = Path(path_name).stem or "image"
    candidate, counter = stem, 1
    while candidate in used:
        counter += 1
        candidate = f"{stem}_{counter}"
    used.add(candidate)
    return candidate


__all__ = ["FolderPrediction", "image_paths", "predict_to_folder"]
