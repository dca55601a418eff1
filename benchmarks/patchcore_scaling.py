"""PatchCore (and PaDiM) on large training sets: fit time and peak memory against the number of training images,
and what streaming the coreset in chunks does to the results.

``--curve``: training sets of 200, 1,000, 3,000 and 10,000 images -- ELPV's 1,508 good cells (mono and poly) in
their eight turns and mirrors (the dihedral group of the square: a cell turned or mirrored is still a good cell),
written once as PNG files and taken in a seeded order. Each fit runs in a fresh process, which reports its fit
seconds, its peak RSS (its own ``VmHWM``) and the memory bank's size. PaDiM runs on the same curve
(``--methods``).

``--quality``: PatchCore with one coreset selection over all training patches (``coreset_chunk`` above the
number of patches: the paper's) against the streamed selection (the default, and smaller chunks), on ELPV mono
and magnetic tile, first module / tile fold of ``disjoint_splits.py``: image AUROC, pixel AUROC (magnetic tile),
fit seconds, bank rows.

    .venv/bin/python benchmarks/patchcore_scaling.py --curve --quality --magnetic-tile ../shared/datasets/magnetic_tile

Writes ``benchmarks/results/patchcore_scaling.json`` (after every measurement).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SIZES = (200, 1000, 3000, 10000)
GLOBAL = 10**9  # coreset_chunk above any number of patches: one selection
FIT_RUN = """
import json, sys, time
import flawscope as fs
from flawscope._memory import peak_rss_mib
paths = json.loads(open(sys.argv[1]).read())[: int(sys.argv[2])]
model = fs.create(sys.argv[3], device="cpu")
started = time.perf_counter()
model.fit(paths, progress=False)
seconds = time.perf_counter() - started
state = {name: list(tensor.shape) for name, tensor in model._state_tensors().items()}
print(json.dumps({"fit_seconds": round(seconds, 1), "state": state,
                  "peak_rss_mib": round(peak_rss_mib())}))
"""


def dihedral_views(folder: Path) -> list[str]:
    """Every good ELPV cell in its 8 turns and mirrors as PNG files under ``folder``, in a seeded order."""
    from flawscope.data.elpv import ELPV
    from flawscope.data.io import read_image

    listing = folder / "paths.json"
    if listing.is_file():
        return json.loads(listing.read_text())
    paths = []
    for sample in ELPV("labelled", "all"):
        if sample.label != 0:
            continue
        cell = np.round(read_image(sample.image)[..., 0] * 255).astype(np.uint8)
        for view in range(8):
            turned = np.rot90(cell, view % 4)
            turned = np.fliplr(turned) if view >= 4 else turned
            path = folder / f"{Path(sample.name).stem}_{view}.png"
            Image.fromarray(np.ascontiguousarray(turned)).save(path)
            paths.append(str(path))
    order = np.random.default_rng(0).permutation(len(paths))
    paths = [paths[i] for i in order]
    listing.write_text(json.dumps(paths))
    return paths


def curve(results: dict, out: Path, methods: list[str], sizes: list[int]) -> None:
    folder = Path(tempfile.gettempdir()) / "flawscope-elpv-views"
    folder.mkdir(exist_ok=True)
    paths = dihedral_views(folder)
    listing = folder / "paths.json"
    for method in methods:
        rows = results.setdefault("curve", {}).setdefault(method, {})
        for size in sizes:
            if size > len(paths):
                continue
            run = subprocess.run(
                [sys.executable, "-c", FIT_RUN, str(listing), str(size), method], capture_output=True, text=True
            )
            if run.returncode != 0:
                raise SystemExit(run.stderr)
            rows[str(size)] = json.loads(run.stdout.strip().splitlines()[-1])
            print(method, size, rows[str(size)], flush=True)
            out.write_text(json.dumps(results, indent=2) + "\n")


def quality(results: dict, out: Path, magnetic_tile: Path | None, chunks: list[int]) -> None:
    import flawscope as fs
    from disjoint_splits import elpv_splits, magnetic_tile_splits

    datasets = {"elpv-mono": next(iter(elpv_splits("mono")))}
    if magnetic_tile is not None:
        datasets["magnetic_tile"] = next(iter(magnetic_tile_splits(magnetic_tile)))
    for data, (split, train, _, test) in datasets.items():
        rows = results.setdefault("quality", {}).setdefault(data, {"split": split, "train_images": len(train)})
        for chunk in chunks:
            model = fs.create("patchcore", coreset_chunk=chunk, device="cpu")
            started = time.perf_counter()
            model.fit(train, progress=False)
            seconds = time.perf_counter() - started
            report = fs.evaluate(model, test, progress=False)
            name = "one selection" if chunk == GLOBAL else f"chunks of {chunk}"
            rows[name] = {
                "fit_seconds": round(seconds, 1),
                "bank_rows": int(model.memory_bank_.shape[0]),
                "image_auroc": round(report.metrics["image_auroc"], 4),
                **({"pixel_auroc": round(report.metrics["pixel_auroc"], 4)} if "pixel_auroc" in report.metrics else {}),
            }
            print(data, name, rows[name], flush=True)
            out.write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curve", action="store_true")
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--methods", nargs="+", default=["patchcore", "padim"])
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--chunks", nargs="+", type=int, default=[GLOBAL, 65_536, 16_384])
    parser.add_argument("--magnetic-tile", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS / "patchcore_scaling.json")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.quality:
        quality(results, args.out, args.magnetic_tile, args.chunks)
    if args.curve:
        curve(results, args.out, args.methods, args.sizes)


if __name__ == "__main__":
    main()
