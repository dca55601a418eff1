"""Figures on parts never seen in training: each data set split by physical part, k-fold over the parts,
beside the split it was reported on before.

* ELPV mono / poly: cells grouped into their solar modules (``flawscope.data.elpv``). Three folds over
  the modules: a fold's modules are tested (every good and defective cell), 200 good training and 50
  calibration cells come from other modules. Beside them the cell-shuffled split of flawscope 0.1.
* magnetic tile: good images grouped into physical tiles (runs of the capture number,
  ``benchmarks/_groups.py``). Three folds over the tiles of all 952 good images: a fold's tiles are
  the good test images, the other tiles train (a tenth of them, whole tiles, calibrate); the 388
  defective images (captures of other tiles) are tested in every fold. Beside them the shipped split.
* bsdata_pitting: split by spindle position already (10 training, 5 test positions); a tenth of the
  training positions, whole, calibrate.

Every run: image AUROC, pixel AUROC and AUPRO where masks exist, balanced accuracy at the calibrated
threshold (the method's default rule; every rule of ``RULES`` beside it) and the best any threshold reaches
on the test data (the oracle), fit
seconds, predict images/s; mean and spread over the folds.

    .venv/bin/python benchmarks/disjoint_splits.py --models patchcore padim \\
        --magnetic-tile ../shared/datasets/magnetic_tile --bsdata ../shared/datasets/bsdata_pitting
    .venv/bin/python benchmarks/disjoint_splits.py --datasets elpv-mono --param coreset_ratio=0.02 \\
        --augment hflip --augment vflip --augment brightness=0.2 --augment contrast=0.2 --tag augment

Writes ``benchmarks/results/disjoint_<model>.json`` (runs of earlier invocations are kept unless rerun).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

import flawscope as fs  # noqa: E402
from _groups import BSDATA_POSITION, magnetic_tiles  # noqa: E402
from flawscope.data.augment import augment  # noqa: E402
from flawscope.data.datasets import GOOD, ImageDataset  # noqa: E402
from flawscope.data.elpv import ELPV  # noqa: E402
from flawscope.data.splits import group_kfold, group_split, holdout_split, with_groups  # noqa: E402
from flawscope.metrics import balanced_accuracy  # noqa: E402
from flawscope.postprocess import threshold_from_scores  # noqa: E402
from flawscope.workflow import open_data, parse_params  # noqa: E402

N_FOLDS = 3
CALIBRATION_SHARE = 0.1
KEYS = ("image_auroc", "pixel_auroc", "aupro", "balanced_accuracy", "balanced_accuracy_oracle")

Split = tuple[str, ImageDataset, ImageDataset, ImageDataset]  # (name, train, calibration, test)


def elpv_splits(cell_type: str) -> Iterator[Split]:
    for fold in range(N_FOLDS):
        parts = (ELPV(split, cell_type, n_folds=N_FOLDS, fold=fold) for split in ("train", "validation", "test"))
        yield (f"module fold {fold + 1}", *parts)
    yield ("shuffled", *(ELPV(split, cell_type, scheme="shuffled") for split in ("train", "validation", "test")))


def magnetic_tile_splits(root: Path) -> Iterator[Split]:
    train = open_data(root, "train")
    test = open_data(root, "test")
    good = ImageDataset(train.samples + [s for s in test.samples if s.label == GOOD], "magnetic tile good")
    good = with_groups(good, magnetic_tiles(good.samples))
    defective = [s for s in test.samples if s.label != GOOD]
    for fold, (rest, tested) in enumerate(group_kfold(good, N_FOLDS, seed=0)):
        fitted, calibration = group_split(rest, (1 - CALIBRATION_SHARE, CALIBRATION_SHARE), seed=0)
        yield (f"tile fold {fold + 1}", fitted, calibration, ImageDataset(tested.samples + defective, "test"))
    fitted, calibration = holdout_split(train, CALIBRATION_SHARE, seed=0)
    yield ("shipped", fitted, calibration, test)


def bsdata_splits(root: Path) -> Iterator[Split]:
    train = open_data(root, "train", groups=BSDATA_POSITION)
    fitted, calibration = group_split(train, (1 - CALIBRATION_SHARE, CALIBRATION_SHARE), seed=0)
    yield ("position (shipped)", fitted, calibration, open_data(root, "test", groups=BSDATA_POSITION))


def split_sources(magnetic_tile: Path, bsdata: Path) -> dict[str, tuple[Callable[[], Iterator[Split]], str]]:
    """Per data set: its splits (the disjoint folds, then the shuffled or shipped split) and the prefix of
    the disjoint splits' names."""
    return {
        "elpv-mono": (lambda: elpv_splits("mono"), "module"),
        "elpv-poly": (lambda: elpv_splits("poly"), "module"),
        "magnetic_tile": (lambda: magnetic_tile_splits(magnetic_tile), "tile"),
        "bsdata_pitting": (lambda: bsdata_splits(bsdata), "position"),
    }


# threshold rules compared on the calibration scores: (rule, k, target_fpr)
RULES = {
    "sigma k=3": ("sigma", 3.0, 0.01),
    "sigma k=2": ("sigma", 2.0, 0.01),
    "fpr 1 %": ("fpr", 3.0, 0.01),
    "fpr 5 %": ("fpr", 3.0, 0.05),
    "fpr 10 %": ("fpr", 3.0, 0.10),
}


def balanced_accuracy_by_rule(calibration_scores: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict:
    """Balanced accuracy on the test scores at the threshold each rule sets on the calibration scores."""
    out = {}
    for name, (rule, k, target_fpr) in RULES.items():
        threshold = threshold_from_scores(calibration_scores, rule, k, target_fpr)
        out[name] = balanced_accuracy(labels, scores > threshold)
    return out


def run(
    model_name: str, params: dict, split: Split, out_of_fold: bool, views: Sequence[str] = (), copies: int = 4
) -> dict:
    """Fit and calibrate (on the held-out calibration images, or with ``out_of_fold`` on every training
    and calibration image, each scored without its group), then evaluate on the test images. ``views``: the
    training images' augmented views (``copies`` of each, :func:`flawscope.datasets.augment`)."""
    name, train, calibration, test = split
    if views:
        train = augment(train, views, copies, params.get("seed", 0))
    model = fs.create(model_name, **{"device": "cpu", **params})
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.CalibrationWarning)
        if out_of_fold:
            everything = ImageDataset(train.samples + calibration.samples, "training and calibration images")
            model.fit_out_of_fold(everything, progress=False)
        else:
            model.fit(train, progress=False).calibrate(calibration, progress=False)
    fit_seconds = time.perf_counter() - started
    calibration_scores = np.asarray(model.calibration_["good_scores"])
    started = time.perf_counter()
    report = fs.evaluate(model, test, worst_cases=0, progress=False)
    predict_seconds = time.perf_counter() - started
    metrics = report.metrics
    labels = np.array([row["label"] for row in report.rows])
    scores = np.array([row["score"] for row in report.rows])
    return {
        "split": name,
        "n_train": len(train),
        "n_calibration": len(calibration),
        "n_test_good": int((test.labels == 0).sum()),
        "n_test_defective": int((test.labels == 1).sum()),
        "fit_seconds": round(fit_seconds, 1),
        "predict_images_per_second": round(len(test) / predict_seconds, 1),
        **{key: metrics[key] for key in KEYS if key in metrics},
        "confusion_matrix": metrics["confusion_matrix"],
        "calibration": {key: model.calibration_[key] for key in ("false_alarms", "n_good", "fpr_interval")},
        "balanced_accuracy_by_rule": balanced_accuracy_by_rule(calibration_scores, labels, scores),
    }


def summary(runs: list[dict], prefix: str) -> dict:
    """Mean and population standard deviation of every metric over the runs whose split starts with ``prefix``."""
    chosen = [r for r in runs if r["split"].startswith(prefix)]
    out: dict = {"n_runs": len(chosen)}
    for key in KEYS:
        values = [r[key] for r in chosen if key in r]
        if values:
            out[key] = mean_spread(values)
    out["balanced_accuracy_by_rule"] = {
        rule: mean_spread([r["balanced_accuracy_by_rule"][rule] for r in chosen]) for rule in RULES
    }
    return out


def mean_spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "spread": statistics.pstdev(values)}


def report() -> str:
    """A markdown table of every ``disjoint_*.json``: per data set, the disjoint folds' mean +- spread and the
    shuffled / shipped split beside them."""
    lines = [
        "| run | data | image AUROC, by part | pixel AUROC, by part | AUPRO, by part "
        "| bal. acc. at fpr 5 % / at mean + 3 std / oracle, by part | image AUROC, shuffled or shipped |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("disjoint_*.json")):
        result = json.loads(path.read_text())
        for dataset, entry in result.items():
            if not isinstance(entry, dict) or "disjoint" not in entry:
                continue
            part, other = entry["disjoint"], [r for r in entry["runs"] if r["split"] in ("shuffled", "shipped")]
            cells = [cell(part.get(key)) for key in ("image_auroc", "pixel_auroc", "aupro")]
            by_rule = part["balanced_accuracy_by_rule"]
            balanced = " / ".join(
                [cell(by_rule["fpr 5 %"]), cell(by_rule["sigma k=3"]), cell(part.get("balanced_accuracy_oracle"))]
            )
            shuffled = f"{other[0]['image_auroc']:.3f}" if other else "--"
            lines.append(
                f"| {path.stem.removeprefix('disjoint_')} | {dataset} | {' | '.join(cells)} | {balanced} | {shuffled} |"
            )
    return "\n".join(lines)


def rule_report(tag: str = "heldout") -> str:
    """A markdown table of the balanced accuracy each threshold rule reaches, by part, in the ``tag`` runs."""
    lines = ["| method | data | oracle | " + " | ".join(RULES) + " |", "|---|---|---" + "|---" * len(RULES) + "|"]
    for path in sorted(RESULTS.glob(f"disjoint_*_{tag}.json")):
        result = json.loads(path.read_text())
        for dataset, entry in result.items():
            if isinstance(entry, dict) and "disjoint" in entry:
                part = entry["disjoint"]
                cells = [f"{part['balanced_accuracy_by_rule'][rule]['mean']:.3f}" for rule in RULES]
                oracle = part["balanced_accuracy_oracle"]["mean"]
                lines.append(f"| {result['model']} | {dataset} | {oracle:.3f} | {' | '.join(cells)} |")
    return "\n".join(lines)


def cell(summary: dict | None) -> str:
    if summary is None:
        return "--"
    return f"{summary['mean']:.3f} +- {summary['spread']:.3f}" if summary["spread"] else f"{summary['mean']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["patchcore"])
    parser.add_argument("--datasets", nargs="+", default=["elpv-mono", "elpv-poly", "magnetic_tile", "bsdata_pitting"])
    parser.add_argument("--magnetic-tile", type=Path, default=ROOT.parent / "shared" / "datasets" / "magnetic_tile")
    parser.add_argument("--bsdata", type=Path, default=ROOT.parent / "shared" / "datasets" / "bsdata_pitting")
    parser.add_argument("--param", action="append", default=[], help="Method parameter as KEY=VALUE, repeatable.")
    parser.add_argument("--tag", default="", help="Suffix of the result file (for a variant's parameters).")
    parser.add_argument(
        "--augment", action="append", default=[], help="Also train on views of each image (hflip, contrast=F ...)."
    )
    parser.add_argument("--augment-copies", type=int, default=4, help="Augmented views per training image.")
    parser.add_argument(
        "--calibration",
        choices=("held-out", "out-of-fold"),
        default="held-out",
        help="Threshold from the held-out calibration images, or fit on training + calibration images and "
        "threshold on their out-of-fold scores (each image without its group).",
    )
    parser.add_argument("--report", action="store_true", help="Print the markdown table of every result and stop.")
    args = parser.parse_args()
    if args.report:
        print(report(), rule_report(), sep="\n\n")
        return
    params = parse_params(args.param)
    sources = split_sources(args.magnetic_tile, args.bsdata)
    out_of_fold = args.calibration == "out-of-fold"
    for model_name in args.models:
        out_path = RESULTS / f"disjoint_{model_name}{'_' + args.tag if args.tag else ''}.json"
        result = json.loads(out_path.read_text()) if out_path.exists() else {}
        result |= {"model": model_name, "params": params, "calibration": args.calibration}
        if args.augment:
            result |= {"augment": args.augment, "augment_copies": args.augment_copies}
        for dataset in args.datasets:
            splits, disjoint = sources[dataset]
            runs = []
            for split in splits():
                runs.append(run(model_name, params, split, out_of_fold, args.augment, args.augment_copies))
                print(model_name, dataset, json.dumps(runs[-1]), flush=True)
            result[dataset] = {"disjoint": summary(runs, disjoint), "runs": runs}
            out_path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
