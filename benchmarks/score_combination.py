"""Scoring rules on parts never seen in training (issue 22): each method's own score, the score relative to
the image's own background, and two methods' normalised scores combined -- all from the same fitted models.

For every split of ``disjoint_splits.py`` (ELPV module folds, magnetic tile tile folds, bsdata by position,
and the shuffled / shipped split beside them) fit each member (default PatchCore and PaDiM) on the same
training images, then score the calibration and test images with both once. The rules, each a function of
an image's score and anomaly map:

* ``<member>``: the method's image score and map as they are;
* ``<member> relative``: score and map minus the median of the image's own map -- an unseen part whose
  whole surface scores high (another tile's grain, a module of another cell design) is judged by what
  stands out of its own background;
* ``combined`` / ``combined relative``: each member's score and map put on one scale by the mean and
  standard deviation of its scores on the good calibration images (z-scores), then averaged.

Reported per split and rule: image AUROC, pixel AUROC and AUPRO where masks exist, balanced accuracy at the
threshold the 5 % rule sets on the rule's calibration scores, and the oracle's.

    .venv/bin/python benchmarks/score_combination.py --datasets elpv-mono elpv-poly magnetic_tile

Writes ``benchmarks/results/score_combination.json`` (data sets of earlier invocations are kept unless rerun).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

import flawscope as fs  # noqa: E402
from disjoint_splits import RULES, Split, cell, mean_spread, split_sources  # noqa: E402
from flawscope.data.datasets import DEFECTIVE, ImageDataset  # noqa: E402
from flawscope.metrics import auroc, balanced_accuracy, best_balanced_accuracy, pixel_metrics  # noqa: E402
from flawscope.postprocess import threshold_from_scores  # noqa: E402


@dataclass
class Scored:
    """One member's image scores and anomaly maps on a set of images, and each map's median."""

    scores: list[float] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    medians: list[float] = field(default_factory=list)

    def add(self, score: float, anomaly_map: np.ndarray, keep_map: bool) -> None:
        self.scores.append(score)
        self.medians.append(float(np.median(anomaly_map)))
        if keep_map:
            self.maps.append(anomaly_map)

    def rule(self, relative: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores and maps as they are, or minus each image's map median."""
        offsets = np.asarray(self.medians) if relative else np.zeros(len(self.scores))
        maps = [m - offset for m, offset in zip(self.maps, offsets, strict=False)]
        return np.asarray(self.scores) - offsets, maps


def fitted_member(model_name: str, train: ImageDataset) -> tuple[fs.Detector, float]:
    """A member fitted on the split's training images, and the seconds that took."""
    model = fs.create(model_name, device="cpu")
    started = time.perf_counter()
    model.fit(train, progress=False)
    return model, time.perf_counter() - started


def scored(model: fs.Detector, images: ImageDataset, keep_maps: bool) -> Scored:
    out = Scored()
    for result in model.iter_predict(images, progress=False):
        out.add(result.score, result.anomaly_map, keep_maps)
    return out


def rules(
    members: list[str], calibration: dict[str, Scored], test: dict[str, Scored]
) -> dict[str, tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
    """Every rule's (calibration scores, test scores, test maps)."""
    out = {}
    for relative in (False, True):
        suffix = " relative" if relative else ""
        z_calibration, z_test, z_maps = [], [], []
        for member in members:
            good, _ = calibration[member].rule(relative)
            scores, maps = test[member].rule(relative)
            out[member + suffix] = (good, scores, maps)
            mean, std = float(good.mean()), float(good.std()) or 1.0
            z_calibration.append((good - mean) / std)
            z_test.append((scores - mean) / std)
            z_maps.append([(m - mean) / std for m in maps])
        combined_maps = [np.mean(per_image, axis=0) for per_image in zip(*z_maps, strict=True)]
        out["combined" + suffix] = (np.mean(z_calibration, axis=0), np.mean(z_test, axis=0), combined_maps)
    return out


def run(members: list[str], split: Split) -> dict:
    """Every rule's figures on one split."""
    name, train, calibration_images, test_images = split
    with_masks = all(s.mask is not None for s in test_images.samples if s.label == DEFECTIVE)
    labels = test_images.labels
    calibration, test, fit_seconds = {}, {}, []
    for member in members:
        model, seconds = fitted_member(member, train)
        fit_seconds.append(round(seconds, 1))
        calibration[member] = scored(model, calibration_images, keep_maps=False)
        test[member] = scored(model, test_images, keep_maps=with_masks)
    masks = [s.read_mask(m.shape) for s, m in zip(test_images.samples, test[members[0]].maps, strict=False)]
    figures = {}
    for rule, (good, scores, maps) in rules(members, calibration, test).items():
        threshold = threshold_from_scores(good, *RULES["fpr 5 %"])
        entry = {
            "image_auroc": auroc(labels, scores),
            "balanced_accuracy": balanced_accuracy(labels, scores > threshold),
            "balanced_accuracy_oracle": best_balanced_accuracy(labels, scores)[0],
        }
        if with_masks:
            pixel = pixel_metrics(maps, masks)
            entry.update(pixel_auroc=pixel["pixel_auroc"], aupro=pixel["aupro"])
        figures[rule] = entry
    return {"split": name, "fit_seconds": fit_seconds, "figures": figures}


def summary(runs: list[dict], prefix: str) -> dict:
    """Mean and spread of every rule's figures over the splits whose name starts with ``prefix``."""
    chosen = [r for r in runs if r["split"].startswith(prefix)]
    out: dict = {"n_runs": len(chosen)}
    for rule in chosen[0]["figures"]:
        figures = [r["figures"][rule] for r in chosen]
        out[rule] = {metric: mean_spread([f[metric] for f in figures]) for metric in figures[0]}
    return out


def report() -> str:
    """A markdown table of ``score_combination.json``: per data set and rule, the disjoint splits' mean +- spread
    and the shuffled or shipped split beside them."""
    result = json.loads((RESULTS / "score_combination.json").read_text())
    lines = [
        "| data | rule | image AUROC, by part | pixel AUROC, by part | AUPRO, by part | bal. acc. at fpr 5 % / oracle, "
        "by part | image AUROC, shuffled or shipped |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, entry in result.items():
        if not isinstance(entry, dict):
            continue
        other = [r for r in entry["runs"] if r["split"] in ("shuffled", "shipped")]
        for rule, figures in entry["disjoint"].items():
            if rule == "n_runs":
                continue
            cells = [cell(figures.get(key)) for key in ("image_auroc", "pixel_auroc", "aupro")]
            balanced = f"{cell(figures['balanced_accuracy'])} / {cell(figures['balanced_accuracy_oracle'])}"
            shuffled = f"{other[0]['figures'][rule]['image_auroc']:.3f}" if other else "--"
            lines.append(f"| {dataset} | {rule} | {' | '.join(cells)} | {balanced} | {shuffled} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", nargs="+", default=["patchcore", "padim"])
    parser.add_argument("--datasets", nargs="+", default=["elpv-mono", "elpv-poly", "magnetic_tile", "bsdata_pitting"])
    parser.add_argument("--magnetic-tile", type=Path, default=ROOT.parent / "shared" / "datasets" / "magnetic_tile")
    parser.add_argument("--bsdata", type=Path, default=ROOT.parent / "shared" / "datasets" / "bsdata_pitting")
    parser.add_argument("--report", action="store_true", help="Print the markdown table of the results and stop.")
    args = parser.parse_args()
    if args.report:
        print(report())
        return
    sources = split_sources(args.magnetic_tile, args.bsdata)
    out_path = RESULTS / "score_combination.json"
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result["members"] = args.members
    for dataset in args.datasets:
        splits, disjoint = sources[dataset]
        runs = []
        for split in splits():
            runs.append(run(args.members, split))
            print(dataset, json.dumps(runs[-1]), flush=True)
        result[dataset] = {"disjoint": summary(runs, disjoint), "runs": runs}
        out_path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
