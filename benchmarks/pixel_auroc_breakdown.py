"""Where a pooled pixel AUROC loses: defect pixels against which normal pixels, per defect type.

The pooled pixel AUROC of an MVTec-layout category ranks every defect pixel against every normal
pixel of every test image -- those of the good images and the normal surroundings of the defects
in the defective images. This script fits one method, scores the test images and splits that
figure up:

- ``defect_vs_good_images``: defect pixels against the good test images' pixels only;
- per defect type: its pixels against the good images, against the normal pixels of its own
  images, and against all normal pixels; the pooled AUROC with that type left out;
- per image group: quantiles of the normal pixels' scores and of the defect pixels' scores.

    .venv/bin/python benchmarks/pixel_auroc_breakdown.py ../shared/datasets/magnetic_tile --train-images 200
    .venv/bin/python benchmarks/pixel_auroc_breakdown.py DIR --model padim --param image_size=256

Writes ``benchmarks/results/pixel_auroc_breakdown_<model>_<category>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))

import flawscope as fs  # noqa: E402
from flawscope.workflow import open_data, parse_params  # noqa: E402

BINS = 4096
QUANTILES = (0.1, 0.5, 0.9, 0.99)


def auroc_from_histograms(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(defect pixel > normal pixel), ties counted half, from counts over the same bins."""
    below = np.cumsum(negative) - negative
    return float((positive * (below + 0.5 * negative)).sum() / (positive.sum() * negative.sum()))


def score_test_images(model, test) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[float]]:
    """Anomaly maps, masks, group names (``good`` or the defect type) and image scores of ``test``."""
    maps, masks, groups, scores = [], [], [], []
    for result in model.iter_predict(test, progress=False):
        sample = result.sample
        maps.append(result.anomaly_map.astype(np.float32))
        masks.append(
            sample.read_mask(result.anomaly_map.shape) if sample.mask else np.zeros(result.anomaly_map.shape, bool)
        )
        groups.append(sample.defect_type if sample.label == 1 else "good")
        scores.append(result.score)
    return maps, masks, groups, scores


def breakdown(maps: list[np.ndarray], masks: list[np.ndarray], groups: list[str]) -> dict:
    edges = np.linspace(min(float(m.min()) for m in maps), max(float(m.max()) for m in maps), BINS + 1)
    names = sorted(set(groups))
    members = {name: [i for i, group in enumerate(groups) if group == name] for name in names}

    def pixels(name: str, defect: bool) -> np.ndarray:
        chosen = [maps[i][masks[i] if defect else ~masks[i]] for i in members[name]]
        return np.concatenate([values.ravel() for values in chosen])

    normal = {name: pixels(name, False) for name in names}
    defect = {name: pixels(name, True) for name in names if name != "good"}
    count = {key: np.histogram(values, edges)[0].astype(np.float64) for key, values in normal.items()}
    defect_count = {key: np.histogram(values, edges)[0].astype(np.float64) for key, values in defect.items()}
    all_normal, all_defect = sum(count.values()), sum(defect_count.values())
    result = {
        "pooled_pixel_auroc": auroc_from_histograms(all_defect, all_normal),
        "defect_vs_good_images": auroc_from_histograms(all_defect, count["good"]) if "good" in count else None,
        "defect_types": {},
        "normal_pixel_quantiles": {
            name: dict(zip(map(str, QUANTILES), np.quantile(normal[name], QUANTILES).round(4).tolist()))
            for name in names
        },
    }
    for name, positive in defect_count.items():
        result["defect_types"][name] = {
            "images": len(members[name]),
            "defect_pixels": int(positive.sum()),
            "vs_good_images": auroc_from_histograms(positive, count["good"]) if "good" in count else None,
            "vs_own_normal_pixels": auroc_from_histograms(positive, count[name]),
            "vs_all_normal_pixels": auroc_from_histograms(positive, all_normal),
            "pooled_without_this_type": auroc_from_histograms(all_defect - positive, all_normal - count[name])
            if len(defect_count) > 1
            else None,
            "defect_pixel_quantiles": dict(
                zip(map(str, QUANTILES), np.quantile(defect[name], QUANTILES).round(4).tolist())
            ),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="An MVTec-layout category with masks.")
    parser.add_argument("--model", default="patchcore")
    parser.add_argument(
        "--param", action="append", default=[], help="Method parameter as KEY=VALUE (JSON value), repeatable."
    )
    parser.add_argument("--train-images", type=int, help="Fit on every n-th training image, this many (default: all).")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    train = open_data(str(args.data), "train")
    if args.train_images and args.train_images < len(train):
        step = len(train) // args.train_images
        train = train.subset(
            list(range(0, len(train), step))[: args.train_images], f"every {step}th, {args.train_images}"
        )
    model = fs.create(args.model, **{"device": "cpu", **parse_params(args.param)})
    started = time.perf_counter()
    model.fit(train, progress=False)
    fit_seconds = time.perf_counter() - started
    result = {
        "model": args.model,
        "data": str(args.data),
        "params": model.get_params(),
        "n_train": len(train),
        "fit_seconds": round(fit_seconds, 1),
        **breakdown(*score_test_images(model, open_data(str(args.data), "test"))[:3]),
    }
    out = args.out or RESULTS / f"pixel_auroc_breakdown_{args.model}_{args.data.name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({key: value for key, value in result.items() if key != "params"}, indent=2))


if __name__ == "__main__":
    main()
