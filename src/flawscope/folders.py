"""Scoring files and folders into a folder: a heat-map overlay and a defect mask per image and one
``predictions.csv`` -- for a fitted detector and an exported model alike (no torch here)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from flawscope.data.datasets import ImageDataset, Sample, list_images
from flawscope.errors import ConfigError, DataError
from flawscope.report import heatmap_overlay, overlay_scale
from flawscope.results import ScoredImage
from flawscope.scoring import Scorer


@dataclass
class FolderPrediction:
    """What :func:`predict_to_folder` wrote: ``predictions.csv``, how many images have a score in it (``n_resumed``
    of them from an earlier run) and which could not be read."""

    csv_path: Path
    n_scored: int
    failed: dict[str, str]
    n_resumed: int = 0


COLUMNS = ["path", "score", "label", "boxes", "overlay", "mask", "error", "conversion"]


def load_scorer(
    model_dir: str | os.PathLike, *, device: str | None = None, graph_format: str | None = None, threads: int = 0
) -> Scorer:
    """The model in ``model_dir``, whichever kind it is: an export, run by :mod:`flawscope.runtime` without torch
    (its ``graph_format`` and engine ``threads``; on the CPU, so a ``device`` is refused), or a fitted detector
    (``device`` overrides the saved one)."""
    from flawscope.runtime import is_exported
    from flawscope.runtime import load as load_export

    directory = Path(model_dir)
    if is_exported(directory):
        if device is not None:
            raise ConfigError(f"{model_dir} is an exported model; it runs on the CPU and takes no --device.")
        return load_export(directory, graph_format, threads=threads)
    from flawscope.serialization import load_detector

    return load_detector(directory, device)


def predict_to_folder(
    detector: Scorer,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    opening: int | None = None,
    progress: bool = True,
    resume: bool = False,
    images: bool = True,
) -> FolderPrediction:
    """Score image files and folders of images; write per image a heat-map overlay, a defect mask (calibrated
    models; neither with ``images=False``) and a row of ``out/predictions.csv``. Unreadable files get a row with
    the reason and the rest go on.

    Each row is flushed as soon as its image is scored, so an interrupted run keeps every row it wrote. With
    ``resume`` the images that already have a score in ``out/predictions.csv`` are not scored again: the run
    goes on from where it stopped (the rows of unreadable images, and a last row cut off by the interruption,
    are dropped and their images tried again). Without ``resume`` the file is started afresh.
    """
    paths = image_paths(inputs)
    if not paths:
        raise DataError(f"No images found in {', '.join(map(str, inputs))}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "predictions.csv"
    done = _scored_rows(csv_path) if resume else {}
    used = {Path(row[COLUMNS.index("overlay")]).stem.removesuffix("_overlay") for row in done.values()}
    failed: dict[str, str] = {}
    todo = [path for path in paths if str(path) not in done]
    dataset = ImageDataset([Sample(path, str(path)) for path in todo], "inputs")
    _start_csv(csv_path, list(done.values()))
    with open(csv_path, "a", newline="") as handle:
        writer = csv.writer(handle)
        for result in detector.iter_predict(dataset, on_error="skip", progress=progress) if todo else ():
            scored = result.anomaly_map is not None
            if not scored:
                failed[result.sample.name] = str(result.error)
            stem = _unique_stem(result.sample.name, used) if scored else ""
            writer.writerow(result_row(detector, result, out if images else None, stem, opening))
            handle.flush()
    return FolderPrediction(csv_path, len(paths) - len(failed), failed, n_resumed=len(done))


def result_row(detector: Scorer, result: ScoredImage, out: Path | None, stem: str, opening: int | None) -> list[str]:
    """The ``predictions.csv`` row (:data:`COLUMNS`) of one result; with ``out``, its overlay and (calibrated
    models) its mask are written there as ``<stem>_overlay.png`` and ``<stem>_mask.png``."""
    if result.anomaly_map is None or result.image is None:
        return [result.sample.name, "", "", "", "", "", str(result.error), ""]
    overlay_name = mask_name = ""
    if out is not None:
        overlay_name = f"{stem}_overlay.png"
        low, high = overlay_scale(detector, result.anomaly_map)
        Image.fromarray(heatmap_overlay(result.image, result.anomaly_map, vmax=high, vmin=low)).save(out / overlay_name)
    label, boxes = "", ""
    if detector.is_calibrated:
        not_ok, mask, found = detector.decide(result.score, result.anomaly_map, opening)
        label = "NOT OK" if not_ok else "OK"
        boxes = json.dumps([[int(v) for v in box[:4]] + [round(box[4], 4)] for box in found])
        if out is not None:
            mask_name = f"{stem}_mask.png"
            Image.fromarray((mask * 255).astype(np.uint8)).save(out / mask_name)
    return [result.sample.name, f"{result.score:.6f}", label, boxes, overlay_name, mask_name, "", result.conversion]


def _scored_rows(csv_path: Path) -> dict[str, list[str]]:
    """The rows of an earlier run's ``predictions.csv`` that hold a score, by path; DataError for another file."""
    if not csv_path.is_file():
        return {}
    text = csv_path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the last row was cut off mid-write
    rows = list(csv.reader(io.StringIO(text)))
    if rows and rows[0] != COLUMNS:
        raise DataError(
            f"{csv_path} is not a predictions.csv of this flawscope (its columns are {rows[0]}, expected "
            f"{COLUMNS}); give another --out to start afresh."
        )
    return {row[0]: row for row in rows[1:] if len(row) == len(COLUMNS) and row[1]}


def _start_csv(csv_path: Path, rows: list[list[str]]) -> None:
    """Write the header and ``rows`` to ``csv_path`` through a temporary file, so the file is never half-written."""
    partial = csv_path.with_name(csv_path.name + ".partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    os.replace(partial, csv_path)


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


__all__ = ["COLUMNS", "FolderPrediction", "image_paths", "load_scorer", "predict_to_folder", "result_row"]
