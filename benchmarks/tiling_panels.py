"""Tiling on whole-module images: ELPV cells put together into 6 x 10 panels (1,800 x 3,000 px, like a 60-cell
module), judged per cell and per panel.

The split is that of ``disjoint_splits.py``'s first module fold (ELPV mono): training, validation and test cells
come from different modules. Panels are seeded mosaics of 300 px cells:

* training panels: the training cells (all good), 60 to a panel, shuffled (the last panel completed with the first
  training cells again);
* "every cell once": the test cells (good and defective), shuffled into panels so that every test cell appears
  once; the squares left in the last panel are filled with validation cells (good, not judged; repeated when
  there are too few);
* per-panel judgement: ``--panels`` panels of test cells, half of them all good and half with 1 to 3 defective
  cells (drawn seeded, a cell may appear in several of these panels).

Three ways of scoring, PatchCore with its defaults otherwise:

* ``cells``: fitted on the training cells one by one, each test cell scored alone (the reference);
* ``tiled``: fitted on the training panels cut into ``--tile`` px tiles overlapping by ``--overlap`` px at native
  resolution; each panel scored tile by tile and blended into one map;
* ``resized``: fitted on the training panels, each panel resized whole to the model input (short side 224, the
  aspect ratio kept).

A cell's score in a panel is the largest value of the panel's map inside the cell's square; a panel's is its
image score. As a diagnostic, cells are also judged on their squares less 30 px along the borders
(``cell_auroc_inner_squares``): a defect next to a border lights up the neighbouring cell's edge too, and a
third of the cells in the "every cell once" panels are defective. Per-cell AUROC, panel AUROC, fit seconds and
seconds per megapixel are written to ``benchmarks/results/tiling_panels.json``.

    .venv/bin/python benchmarks/tiling_panels.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import flawscope as fs  # noqa: E402
from flawscope.data.datasets import DEFECTIVE, GOOD, Sample  # noqa: E402
from flawscope.data.elpv import ELPV  # noqa: E402
from flawscope.data.io import read_image  # noqa: E402
from flawscope.metrics import auroc  # noqa: E402

ROWS, COLUMNS, CELL = 6, 10, 300
INNER_MARGIN = 30  # a diagnostic: each cell judged without the 10 % of its square along its borders
N_FOLDS = 3  # disjoint_splits.py's module folds


def cell_pixels(sample: Sample) -> np.ndarray:
    """A 300 x 300 cell as uint8 grey."""
    pixels = read_image(sample.image)[..., 0]
    if pixels.shape != (CELL, CELL):
        raise SystemExit(f"{sample.name} is {pixels.shape}, not {CELL} x {CELL}")
    return np.round(pixels * 255).astype(np.uint8)


def write_panel(cells: list[Sample], path: Path) -> None:
    """Cells laid out row by row into a ROWS x COLUMNS panel, saved as PNG."""
    panel = np.zeros((ROWS * CELL, COLUMNS * CELL), dtype=np.uint8)
    for index, sample in enumerate(cells):
        row, column = divmod(index, COLUMNS)
        panel[row * CELL : (row + 1) * CELL, column * CELL : (column + 1) * CELL] = cell_pixels(sample)
    Image.fromarray(panel).save(path)


def panels_of(cells: list[Sample], filler: list[Sample]) -> list[list[Sample]]:
    """``cells`` in panels of ROWS x COLUMNS, the last one completed with ``filler``."""
    per_panel = ROWS * COLUMNS
    panels = [cells[start : start + per_panel] for start in range(0, len(cells), per_panel)]
    missing = per_panel - len(panels[-1])
    if missing > len(filler):
        raise SystemExit(f"{missing} squares to fill, {len(filler)} filler cells")
    panels[-1] = panels[-1] + filler[:missing]
    return panels


def judged_panels(test: list[Sample], count: int, rng: np.random.Generator) -> list[list[Sample]]:
    """``count`` panels of test cells: the even ones all good, the odd ones with 1 to 3 defective cells."""
    good = [sample for sample in test if sample.label == GOOD]
    defective = [sample for sample in test if sample.label == DEFECTIVE]
    panels = []
    for index in range(count):
        n_defective = 0 if index % 2 == 0 else int(rng.integers(1, 4))
        chosen = [defective[i] for i in rng.choice(len(defective), n_defective, replace=False)]
        chosen += [good[i] for i in rng.choice(len(good), ROWS * COLUMNS - n_defective, replace=False)]
        panels.append([chosen[i] for i in rng.permutation(len(chosen))])
    return panels


def cell_maxima(anomaly_map: np.ndarray, margin: int = 0) -> np.ndarray:
    """``(ROWS * COLUMNS,)`` largest map value inside each cell's square (less ``margin`` px at each side), row by
    row."""
    squares = anomaly_map.reshape(ROWS, CELL, COLUMNS, CELL)[:, margin : CELL - margin, :, margin : CELL - margin]
    return squares.max(axis=(1, 3)).reshape(-1)


def score_panels(model: fs.Detector, paths: list[Path]) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, float]:
    """Per-cell maxima of every panel (whole squares, and squares less INNER_MARGIN), panel scores, seconds."""
    started = time.perf_counter()
    prediction = model.predict([str(path) for path in paths], progress=False)
    seconds = time.perf_counter() - started
    maps = prediction.anomaly_maps
    inner = [cell_maxima(anomaly_map, INNER_MARGIN) for anomaly_map in maps]
    return [cell_maxima(anomaly_map) for anomaly_map in maps], inner, prediction.scores, seconds


def evaluate_panels(
    model: fs.Detector, cover: tuple[list[Path], list[list[Sample]], int], judged: tuple[list[Path], list[list[Sample]]]
) -> dict[str, float]:
    """Per-cell AUROC on the panels holding every test cell once, and on the judged panels; panel AUROC."""
    cover_paths, cover_cells, n_test = cover
    maxima, inner, _, seconds = score_panels(model, cover_paths)
    scores = np.concatenate(maxima)[:n_test]  # the filler squares come last
    labels = np.array([sample.label for cells in cover_cells for sample in cells])[:n_test]
    judged_paths, judged_cells = judged
    judged_maxima, _, panel_scores, judged_seconds = score_panels(model, judged_paths)
    judged_labels = np.array([sample.label for cells in judged_cells for sample in cells])
    panel_labels = np.array([int(any(sample.label == DEFECTIVE for sample in cells)) for cells in judged_cells])
    megapixels = (len(cover_paths) + len(judged_paths)) * ROWS * CELL * COLUMNS * CELL / 1e6
    return {
        "cell_auroc": round(auroc(labels, scores), 4),
        "cell_auroc_inner_squares": round(auroc(labels, np.concatenate(inner)[:n_test]), 4),
        "cell_auroc_judged_panels": round(auroc(judged_labels, np.concatenate(judged_maxima)), 4),
        "panel_auroc": round(auroc(panel_labels, panel_scores), 4),
        "seconds_per_megapixel": round((seconds + judged_seconds) / megapixels, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=CELL)
    parser.add_argument("--overlap", type=int, default=60)
    parser.add_argument("--panels", type=int, default=20, help="Panels judged per panel (half all good).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tiling_panels.json")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    train, validation, test = (
        ELPV(split, "mono", n_folds=N_FOLDS, fold=0) for split in ("train", "validation", "test")
    )
    train_cells = [train.samples[i] for i in rng.permutation(len(train))]
    test_cells = [test.samples[i] for i in rng.permutation(len(test))]
    folder = Path(tempfile.mkdtemp(prefix="flawscope-panels-"))
    panel_sets = {
        "train": panels_of(train_cells, train_cells),
        "cover": panels_of(test_cells, list(validation.samples) * 2),
        "judged": judged_panels(list(test.samples), args.panels, rng),
    }
    paths: dict[str, list[Path]] = {}
    for kind, panels in panel_sets.items():
        paths[kind] = [folder / f"{kind}_{index:03d}.png" for index in range(len(panels))]
        for cells, path in zip(panels, paths[kind]):
            write_panel(cells, path)
    cover = (paths["cover"], panel_sets["cover"], len(test_cells))
    judged = (paths["judged"], panel_sets["judged"])
    results: dict[str, object] = {
        "data": "ELPV mono, module fold 1 of 3 (disjoint_splits.py)",
        "panel": f"{ROWS} x {COLUMNS} cells of {CELL} px = {ROWS * CELL} x {COLUMNS * CELL} px",
        "training_cells": len(train_cells),
        "training_panels": len(paths["train"]),
        "test_cells": len(test_cells),
        "test_defective_cells": int((test.labels == DEFECTIVE).sum()),
        "cover_panels": len(paths["cover"]),
        "judged_panels": len(paths["judged"]),
        "seed": args.seed,
    }

    started = time.perf_counter()
    cells_model = fs.create("patchcore", seed=args.seed).fit(train, progress=False)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    cell_scores = cells_model.predict(test, progress=False).scores
    seconds = time.perf_counter() - started
    results["cells"] = {
        "cell_auroc": round(auroc(test.labels, cell_scores), 4),
        "fit_seconds": round(fit_seconds, 1),
        "seconds_per_megapixel": round(seconds / (len(test) * CELL * CELL / 1e6), 3),
    }
    print("cells", results["cells"], flush=True)

    variants = {
        "tiled": {"tile": args.tile, "overlap": args.overlap},
        "resized": {"input_shape": "aspect"},
    }
    for name, params in variants.items():
        started = time.perf_counter()
        model = fs.create("patchcore", seed=args.seed, **params).fit([str(p) for p in paths["train"]], progress=False)
        fit_seconds = time.perf_counter() - started
        results[name] = {
            "params": params,
            "fit_seconds": round(fit_seconds, 1),
            **evaluate_panels(model, cover, judged),
        }
        print(name, results[name], flush=True)
    results["tiled_minus_cells"] = round(results["tiled"]["cell_auroc"] - results["cells"]["cell_auroc"], 4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
