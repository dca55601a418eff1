"""Magnetic tile: the shipped split against a split grouped by physical tile.

The data's README warns that its every-third-image split of the defect-free images can put the
same physical tile in ``train/good`` and ``test/good`` under different capture settings
(``expN_`` prefixes). The ``num`` in ``expN_num_M`` runs up along one tile's captures (about 20
apart) and jumps between tiles, so every run of good images whose consecutive ``num`` differ by
at most ``--gap`` is taken as one tile. The grouped split puts every third tile (sorted by
``num``) in the test set, the rest in training, which keeps about the shipped proportions.

Both splits fit the same method on their training images and are judged on their good test
images plus every defective test image (the same 388 for both): image AUROC, pooled pixel AUROC,
AUPRO, defect pixels against the good test images' pixels only, and the median score of the normal
pixels of the good and of the defective test images.

    .venv/bin/python benchmarks/grouped_split.py ../shared/datasets/magnetic_tile

Writes ``benchmarks/results/grouped_split_<model>_magnetic_tile.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import flawscope as fs  # noqa: E402
from _groups import magnetic_tiles  # noqa: E402
from flawscope.data.datasets import GOOD, ImageDataset, Sample  # noqa: E402
from flawscope.metrics import auroc, pixel_metrics  # noqa: E402
from flawscope.workflow import open_data, parse_params  # noqa: E402
from pixel_auroc_breakdown import breakdown, score_test_images  # noqa: E402


def grouped_split(good: list[Sample], gap: int) -> tuple[list[Sample], list[Sample], int]:
    """Every third tile (in ``num`` order) to the test set, the others to training."""
    tile_of = magnetic_tiles(good, gap)
    index_of = {tile: index for index, tile in enumerate(sorted(set(tile_of)))}
    train = [sample for sample, tile in zip(good, tile_of) if index_of[tile] % 3 != 2]
    test = [sample for sample, tile in zip(good, tile_of) if index_of[tile] % 3 == 2]
    return train, test, len(index_of)


def judge(model_name: str, params: dict, train: list[Sample], test: list[Sample]) -> dict:
    model = fs.create(model_name, **{"device": "cpu", **params})
    started = time.perf_counter()
    model.fit(ImageDataset(train, "training images"), progress=False)
    fit_seconds = time.perf_counter() - started
    maps, masks, types, scores = score_test_images(model, ImageDataset(test, "test images"))
    groups = ["good" if name == "good" else "defective" for name in types]
    labels = [int(group == "defective") for group in groups]
    parts = breakdown(maps, masks, groups)
    pixels = pixel_metrics(maps, masks)
    return {
        "n_train": len(train),
        "n_test_good": labels.count(0),
        "n_test_defective": labels.count(1),
        "fit_seconds": round(fit_seconds, 1),
        "image_auroc": auroc(labels, scores),
        "pixel_auroc": pixels["pixel_auroc"],
        "aupro": pixels["aupro"],
        "defect_vs_good_images": parts["defect_vs_good_images"],
        "median_normal_pixel": {name: values["0.5"] for name, values in parts["normal_pixel_quantiles"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="The magnetic_tile category (MVTec layout).")
    parser.add_argument("--model", default="patchcore")
    parser.add_argument(
        "--param", action="append", default=[], help="Method parameter as KEY=VALUE (JSON value), repeatable."
    )
    parser.add_argument("--gap", type=int, default=100, help="Largest num step within one tile (default 100).")
    args = parser.parse_args()
    params = parse_params(args.param)
    shipped_train = list(open_data(str(args.data), "train"))
    test = list(open_data(str(args.data), "test"))
    shipped_good = [sample for sample in test if sample.label == GOOD]
    defective = [sample for sample in test if sample.label != GOOD]
    grouped_train, grouped_good, n_tiles = grouped_split(shipped_train + shipped_good, args.gap)
    result = {"model": args.model, "params": params, "gap": args.gap, "tiles": n_tiles}
    for name, train, good in (("shipped", shipped_train, shipped_good), ("grouped", grouped_train, grouped_good)):
        result[name] = judge(args.model, params, train, good + defective)
        print(name, json.dumps(result[name]), flush=True)
    (RESULTS / f"grouped_split_{args.model}_{args.data.name}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
