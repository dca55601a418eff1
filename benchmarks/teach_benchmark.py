"""Teach a model a new lighting on the line: magnetic tile fitted under exp1-exp3, taught the false alarms of exp4-6.

The magnetic-tile file names carry the capture setting (``exp1`` ... ``exp6``); exp4-exp6 are lit
differently from exp1-exp3, and every physical tile was captured under all six (``_groups.magnetic_tiles``).
The good tiles are split, seeded, into four disjoint sets: *fit* (their exp1-exp3 images train the model),
*calibration* (their exp1-exp3 images set the threshold, the library's default rule), *line* (their
exp4-exp6 images arrive in a seeded order) and *held out* (never taught: their exp4-exp6 images measure the
false-alarm rate in the new lighting, their exp1-exp3 images the rate in the old one).

Playing the line: each arriving image is scored by the model served at that moment; when it is judged NOT OK
(a false alarm: every line image is good) the operator teaches it (``--teach false-alarms``, the default). With
``--teach all`` the operator confirms every arriving part as good and each is taught -- a changeover run in which
the first parts of the new lighting are all reviewed. When the taught count reaches a milestone
(K = 5, 10, 20, 50) the model is updated with the images taught since the last update (``Detector.update``),
keeping the threshold. At K = 0 and every milestone: false-alarm rate on the held-out tiles (new and old
lighting), recall on all 388 defective test images at the same threshold, image AUROC (held-out good images of
both lightings against the defective ones), the update's time -- and, for comparison, a model fitted from
scratch on the fit images plus the K taught ones, calibrated again on the calibration images (its fit time and
the same figures at its own threshold) and the updated model recalibrated (its saved rule) on the calibration
images, which an update leaves out (PaDiM's scores change scale with an update).

    .venv/bin/python benchmarks/teach_benchmark.py ../shared/datasets/magnetic_tile

Writes ``benchmarks/results/teach_magnetic_tile.json`` (``teach_magnetic_tile_all.json`` with ``--teach all``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import flawscope as fs  # noqa: E402
from _groups import magnetic_tiles  # noqa: E402
from flawscope.data.datasets import GOOD, ImageDataset, Sample  # noqa: E402
from flawscope.metrics import auroc  # noqa: E402
from flawscope.workflow import open_data  # noqa: E402

MILESTONES = (5, 10, 20, 50)
SHARES = {"fit": 0.3, "calibration": 0.1, "line": 0.45, "held_out": 0.15}
NEW_LIGHTING = {4, 5, 6}


def lighting(sample: Sample) -> int:
    match = re.search(r"exp(\d)_", Path(sample.name).name)
    assert match is not None, sample.name
    return int(match.group(1))


def in_memory(samples: list[Sample]) -> list[Sample]:
    """The samples with their pixels read once (uint8), so the many passes below do not decode PNGs again."""
    return [dataclasses.replace(s, image=np.asarray(Image.open(s.image).convert("L"))) for s in samples]


def tile_sets(good: list[Sample], seed: int) -> dict[str, list[Sample]]:
    """The good images split by physical tile into the four sets of :data:`SHARES`, then by lighting."""
    tile_of = magnetic_tiles(good)
    tiles = sorted(set(tile_of))
    order = np.random.default_rng(seed).permutation(len(tiles))
    bounds = np.cumsum([0, *(round(share * len(tiles)) for share in SHARES.values())])
    bounds[-1] = len(tiles)
    set_of = {tiles[order[i]]: name for name, lo, hi in zip(SHARES, bounds[:-1], bounds[1:]) for i in range(lo, hi)}
    chosen: dict[str, list[Sample]] = {}
    for sample, tile in zip(good, tile_of):
        part = set_of[tile]
        new = lighting(sample) in NEW_LIGHTING
        if part in ("fit", "calibration") and not new:
            chosen.setdefault(part, []).append(sample)
        elif part == "line" and new:
            chosen.setdefault("line", []).append(sample)
        elif part == "held_out":
            chosen.setdefault("held_out_new" if new else "held_out_old", []).append(sample)
    return chosen


def figures(model, held_new: list[Sample], held_old: list[Sample], defective: list[Sample]) -> dict:
    """False-alarm rates, recall and image AUROC at the model's own threshold."""
    everything = held_new + held_old + defective
    prediction = model.predict(ImageDataset(everything, "evaluation"), progress=False)
    labels = prediction.labels
    n_new, n_old = len(held_new), len(held_old)
    truth = np.r_[np.zeros(n_new + n_old), np.ones(len(defective))]
    defect_new = np.array([lighting(s) in NEW_LIGHTING for s in defective])
    recall = labels[n_new + n_old :]
    return {
        "threshold": float(model.threshold_),
        "false_alarm_rate_new_lighting": float(labels[:n_new].mean()),
        "false_alarm_rate_old_lighting": float(labels[n_new : n_new + n_old].mean()),
        "recall": float(recall.mean()),
        "recall_new_lighting": float(recall[defect_new].mean()),
        "recall_old_lighting": float(recall[~defect_new].mean()),
        "image_auroc": auroc(truth, prediction.scores),
    }


def fitted(method: str, images: list[Sample], calibration: list[Sample]) -> tuple[object, float]:
    model = fs.create(method, device="cpu")
    started = time.perf_counter()
    model.fit(ImageDataset(images, "fit images"), progress=False)
    seconds = time.perf_counter() - started
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.CalibrationWarning)
        model.calibrate(ImageDataset(calibration, "calibration images"), progress=False)
    return model, seconds


def play_the_line(
    method: str, sets: dict[str, list[Sample]], defective: list[Sample], seed: int, teach_all: bool
) -> dict:
    held = (sets["held_out_new"], sets["held_out_old"], defective)
    model, fit_seconds = fitted(method, sets["fit"], sets["calibration"])
    rows = [{"taught": 0, "line_images_seen": 0, **figures(model, *held), "fit_seconds": round(fit_seconds, 1)}]
    if hasattr(model, "coverage_radius_"):
        rows[0]["coverage_radius"] = model.coverage_radius_
    print(method, json.dumps(rows[-1]), flush=True)
    line = [sets["line"][i] for i in np.random.default_rng(seed).permutation(len(sets["line"]))]
    taught: list[Sample] = []
    since_update: list[Sample] = []
    milestones = list(MILESTONES)
    for seen, sample in enumerate(line, start=1):
        if not teach_all and not model.predict([sample.image], progress=False).labels[0]:
            continue
        taught.append(sample)
        since_update.append(sample)
        if len(taught) < milestones[0]:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fs.CalibrationWarning)  # PaDiM: its scale moved, measured below
            model = model.update(ImageDataset(since_update, "taught"), progress=False)
            recalibrated = copy.copy(model).recalibrate(
                ImageDataset(sets["calibration"], "calibration"), progress=False
            )
        since_update = []
        refit, refit_seconds = fitted(method, sets["fit"] + taught, sets["calibration"])
        rows.append(
            {
                "taught": len(taught),
                "line_images_seen": seen,
                **figures(model, *held),
                "update_seconds": model.lineage_[-1]["seconds"],
                "taught_now_judged_ok": float(
                    1 - model.predict(ImageDataset(taught, "taught"), progress=False).labels.mean()
                ),
                "update": {k: v for k, v in model.lineage_[-1].items() if k not in ("event", "parent", "seconds")},
                "refit": {**figures(refit, *held), "fit_seconds": round(refit_seconds, 1)},
                "recalibrated": figures(recalibrated, *held),
            }
        )
        print(method, json.dumps(rows[-1]), flush=True)
        milestones.pop(0)
        if not milestones:
            break
    return {"rows": rows, "line_images": len(line), "taught_total": len(taught), "milestones_missed": milestones}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="The magnetic_tile category (MVTec layout).")
    parser.add_argument("--models", default="patchcore,padim")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teach", choices=("false-alarms", "all"), default="false-alarms")
    args = parser.parse_args()
    train, test = list(open_data(str(args.data), "train")), list(open_data(str(args.data), "test"))
    good = [s for s in train + test if s.label == GOOD and lighting(s) != 0]  # exp0: 3 stray images
    defective = in_memory([s for s in test if s.label != GOOD])
    sets = {name: in_memory(samples) for name, samples in tile_sets(good, args.seed).items()}
    out = RESULTS / f"teach_{args.data.name}{'_all' if args.teach == 'all' else ''}.json"
    result = json.loads(out.read_text()) if out.exists() else {"models": {}}  # other models' runs are kept
    result |= {
        "data": args.data.name,
        "seed": args.seed,
        "sets": {name: len(samples) for name, samples in sets.items()},
        "n_defective": len(defective),
        "threshold_rule": "library default (fpr, 5 %) on the calibration tiles' exp1-exp3 images",
        "taught": args.teach,
    }
    for method in args.models.split(","):
        result["models"][method] = play_the_line(method, sets, defective, args.seed, args.teach == "all")
        out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
