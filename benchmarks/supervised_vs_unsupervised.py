"""The supervised CAM classifier and unsupervised methods judged on the same test images.

The CAM classifier's test images are the seeded 20 % of a data set's labelled images that its fit
never saw (``flawscope fit --model cam_classifier``). Each unsupervised method fits on its usual
good training images, calibrates its threshold (mean + 3 std) on its usual held-out good images,
and is judged on that same 20 % minus any image it fitted or calibrated on (with seed 0 none is
dropped on ELPV or magnetic tile; the check guards other seeds and data). The classifier is
judged on that same subset too, so every row of one data set counts the same images.

    .venv/bin/python benchmarks/supervised_vs_unsupervised.py --magnetic-tile ../shared/datasets/magnetic_tile

Writes ``benchmarks/results/supervised_vs_unsupervised.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))

import flawscope as fs  # noqa: E402
from flawscope.data.datasets import ImageDataset  # noqa: E402
from flawscope.workflow import evaluation_data, fit_and_calibrate, training_data  # noqa: E402

KEYS = ("accuracy", "balanced_accuracy", "confusion_matrix", "image_auroc")


VALIDATION_FRACTION = 0.1  # of the good training images, held out to calibrate (as `flawscope fit` does)


def images_seen(data: str, seed: int) -> set[str]:
    """Names of the images an unsupervised method fits or calibrates on."""
    used = training_data(data, supervised=False, validation_fraction=VALIDATION_FRACTION, seed=seed)
    return {sample.name for sample in list(used.train) + list(used.calibration or [])}


def common_test_images(data: str, seed: int) -> ImageDataset:
    """The classifier's test split without the images the unsupervised methods fit or calibrate on."""
    test = evaluation_data(data, supervised=True, seed=seed)
    seen = images_seen(data, seed)
    kept = [index for index, sample in enumerate(test) if sample.name not in seen]
    return test.subset(kept, f"{test.description} minus unsupervised train/validation")


def judge(model: str, data: str, test: ImageDataset, seed: int) -> dict:
    fitted = fit_and_calibrate(
        model, data, {"device": "cpu", "seed": seed}, validation_fraction=VALIDATION_FRACTION, progress=False
    )
    metrics = fs.evaluate(fitted.model, test, worst_cases=0, progress=False).metrics
    return {"model": model, "fit_seconds": round(fitted.fit_seconds, 1), **{key: metrics[key] for key in KEYS}}


def table(results: list[dict]) -> str:
    lines = [
        "| data | test images (good / defective) | method | accuracy | balanced accuracy "
        "| confusion [[TN, FP], [FN, TP]] | image AUROC |",
        "|---|---|---|---|---|---|---|",
    ]
    for block in results:
        for row in block["rows"]:
            lines.append(
                f"| {block['dataset']} | {block['n_good']} / {block['n_defective']} | {row['model']} | "
                f"{row['accuracy']:.3f} | {row['balanced_accuracy']:.3f} | {row['confusion_matrix']} | "
                f"{row['image_auroc']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--magnetic-tile", type=Path, help="Also run on this MVTec-layout category.")
    parser.add_argument("--models", nargs="*", default=["cam_classifier", "patchcore", "padim"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    datasets = [("elpv:mono", "elpv-mono"), ("elpv:poly", "elpv-poly")]
    if args.magnetic_tile:
        datasets.append((str(args.magnetic_tile), "magnetic_tile"))
    results = []
    for data, name in datasets:
        test = common_test_images(data, args.seed)
        labels = test.labels
        block = {
            "dataset": name,
            "n_good": int((labels == 0).sum()),
            "n_defective": int((labels == 1).sum()),
            "rows": [],
        }
        for model in args.models:
            print(f"{name}: {model}", flush=True)
            block["rows"].append(judge(model, data, test, args.seed))
        results.append(block)
    (RESULTS / "supervised_vs_unsupervised.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
