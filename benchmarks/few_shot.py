"""A few good images: image / pixel AUROC against the number of good training images, on parts never seen.

Each data set is split by physical part as in ``disjoint_splits.py`` (its first fold): ELPV mono by solar
module, magnetic tile by tile. ``k`` good images are drawn, seeded, from that fold's training images
(``k = all`` takes every one of them: the full-data model of ``docs/results.md``), a model is fitted on them and
judged on the fold's test images (parts never seen). Variants (``--variants``):

* ``default``: the method's defaults (PatchCore keeps 10 % of the patches in its memory bank);
* ``full-bank``: PatchCore with ``coreset_ratio=1`` (every patch; with few images the bank stays small);
* ``augmented``: ``full-bank`` trained on the images and 4 views of each: ``hflip``, ``vflip`` -- the views a
  solar cell and a magnetic tile keep their meaning under (``flawscope.datasets.augment``).

``--methods padim`` runs PaDiM the same way (its defaults; the variants' parameters are PatchCore's).

With 2 or more images the threshold is also set the few-shot way -- on the training images' out-of-fold
scores (``fit_out_of_fold``: leave-one-out, no image held back from the fit; PatchCore with every patch does it
exactly, without refitting) -- and the false-alarm rate and recall it gives on the test images are reported
beside the rate it aims at (5 %).

    .venv/bin/python benchmarks/few_shot.py --data elpv-mono --magnetic-tile ../shared/datasets/magnetic_tile

Writes ``benchmarks/results/few_shot_<data>.json`` (after every run); ``--plot`` draws the curves of every such
file into ``docs/images/few_shot.png`` instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

import flawscope as fs  # noqa: E402
from disjoint_splits import elpv_splits, magnetic_tile_splits  # noqa: E402
from flawscope.data.datasets import ImageDataset  # noqa: E402
from flawscope.datasets import augment  # noqa: E402

VARIANTS = {
    "default": ({}, ()),
    "full-bank": ({"coreset_ratio": 1.0}, ()),
    "augmented": ({"coreset_ratio": 1.0}, ("hflip", "vflip")),
}
VIEWS = 4
COLOURS = {
    "patchcore default": "tab:orange",
    "patchcore full-bank": "tab:green",
    "patchcore augmented": "tab:blue",
    "padim default": "tab:purple",
}


def first_fold(data: str, magnetic_tile: Path | None) -> tuple[ImageDataset, ImageDataset]:
    """``(training images, test images)`` of the first fold split by physical part."""
    if data == "elpv-mono":
        _, train, _, test = next(elpv_splits("mono"))
        return train, test
    if magnetic_tile is None:
        raise SystemExit("--magnetic-tile DIR is needed for --data magnetic_tile")
    _, train, calibration, test = next(magnetic_tile_splits(magnetic_tile))
    return ImageDataset(train.samples + calibration.samples, "training tiles"), test


def run(method: str, variant: str, pool: ImageDataset, test: ImageDataset, k: int | None, seed: int) -> dict:
    params, transforms = VARIANTS[variant]
    if method != "patchcore":
        params = {}
    chosen = pool if k is None else pool.subset(sorted(np.random.default_rng(seed).permutation(len(pool))[:k]), "k")
    images = augment(chosen, transforms, VIEWS, seed) if transforms else chosen
    model = fs.create(method, device="cpu", seed=seed, **params)
    started = time.perf_counter()
    model.fit(images, progress=False)
    fit_seconds = time.perf_counter() - started
    metrics = fs.evaluate(model, test, worst_cases=0, progress=False).metrics
    row = {
        "k": len(chosen),
        "seed": seed,
        "fit_seconds": round(fit_seconds, 2),
        **{key: metrics[key] for key in ("image_auroc", "pixel_auroc", "aupro") if key in metrics},
    }
    if 2 <= len(chosen) <= 16 and method == "patchcore" and params.get("coreset_ratio") == 1.0:
        row["out_of_fold_threshold"] = out_of_fold_threshold(model, images, test)
    return row


def out_of_fold_threshold(model, images: ImageDataset, test: ImageDataset) -> dict:
    """The threshold from the training images' out-of-fold scores, and what it does on the test images."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.CalibrationWarning)
        try:
            model.fit_out_of_fold(images, progress=False)
        except fs.DataError as error:  # e.g. every image from one solar module: no other group to score against
            return {"error": str(error)}
    labels = model.predict(test, progress=False).labels
    good = test.labels == 0
    return {
        "aimed_fpr": model.calibration_["aimed_fpr"],
        "test_false_alarm_rate": float(labels[good].mean()),
        "test_recall": float(labels[~good].mean()),
    }


def summary(rows: list[dict]) -> dict:
    out: dict = {"k": rows[0]["k"], "runs": len(rows)}
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        values = [row[key] for row in rows if key in row]
        if values:
            out[key] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}
    thresholds = [row["out_of_fold_threshold"] for row in rows if "test_recall" in row.get("out_of_fold_threshold", {})]
    for key in ("test_false_alarm_rate", "test_recall"):
        if thresholds:
            out[f"out_of_fold_{key}"] = statistics.fmean(t[key] for t in thresholds)
    return out


def plot(out: Path) -> None:
    """Image AUROC (and pixel AUROC where there are masks) against k, mean and spread over the seeds, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(RESULTS.glob("few_shot_*.json"))
    panels = [(json.loads(f.read_text()), metric) for f in files for metric in ("image_auroc", "pixel_auroc")]
    panels = [(r, m) for r, m in panels if any(m in run["summary"] for run in r["runs"].values())]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for axis, (result, metric) in zip(axes[0], panels):
        curves: dict[str, list[tuple[int, float, float]]] = {}
        for key, run in result["runs"].items():
            method, variant, _ = key.split(" ")
            if metric in run["summary"]:
                values = run["summary"][metric]
                curves.setdefault(f"{method} {variant}", []).append(
                    (run["summary"]["k"], values["mean"], values["std"])
                )
        full = max((point for points in curves.values() for point in points), key=lambda point: point[0])
        for label, points in sorted(curves.items()):
            points.sort()
            ks, means, stds = (np.array(column) for column in zip(*points))
            colour = COLOURS[label]
            axis.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=label, color=colour)
        axis.axhline(full[1], color="grey", linestyle=":", linewidth=1)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("good training images (k)")
        axis.set_ylabel(metric.replace("_", " "))
        axis.set_title(result["data"])
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("elpv-mono", "magnetic_tile"), default="elpv-mono")
    parser.add_argument("--magnetic-tile", type=Path, default=None, help="The magnetic_tile category.")
    parser.add_argument("--methods", default="patchcore")
    parser.add_argument("--variants", default="default,full-bank,augmented")
    parser.add_argument("--ks", default="1,2,4,8,16,50,all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--large-k-variants", default="default", help="Variants run for k > 16.")
    parser.add_argument("--plot", action="store_true", help="Only draw docs/images/few_shot.png from the results.")
    args = parser.parse_args()
    if args.plot:
        plot(ROOT / "docs" / "images" / "few_shot.png")
        return
    pool, test = first_fold(args.data, args.magnetic_tile)
    out = RESULTS / f"few_shot_{args.data}.json"
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update({"data": args.data, "n_pool": len(pool), "n_test": len(test), "views": VIEWS})
    runs = result.setdefault("runs", {})
    for method in args.methods.split(","):
        for k_text in args.ks.split(","):
            k = None if k_text == "all" else int(k_text)
            variants = args.variants if k is not None and k <= 16 else args.large_k_variants
            for variant in variants.split(","):
                seeds = [0] if k is None else range(args.seeds)
                rows = [run(method, variant, pool, test, k, seed) for seed in seeds]
                key = f"{method} {variant} k={k_text}"
                runs[key] = {"summary": summary(rows), "rows": rows}
                print(key, json.dumps(runs[key]["summary"]), flush=True)
                out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
