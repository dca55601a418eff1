"""Peak memory and time of scoring one very large image with a tiled PatchCore: an 8,192 x 8,192 image
(67 megapixels; 201 MB as uint8 RGB, 805 MB as float32), colour and grey, through the library and through
``flawscope predict`` (which also draws the overlay and the mask).

A tiled PatchCore (``--tile`` px tiles, ``--overlap`` px overlap, defaults otherwise) is fitted on two 1,024 px
textures, calibrated, saved; each measurement then runs in a fresh process, which reports its own peak RSS
(``VmHWM``, :func:`flawscope._memory.peak_rss_mib`: a child's ``ru_maxrss`` would include this fitting process's
peak). Writes ``benchmarks/results/tiling_memory.json``.

    .venv/bin/python benchmarks/tiling_memory.py
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
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SIDE = 8192
LIBRARY_RUN = """
import json, sys, time
import flawscope as fs
from flawscope._memory import peak_rss_mib
fs.set_max_pixels({side} * {side})
model = fs.load(sys.argv[1])
started = time.perf_counter()
prediction = model.predict([sys.argv[2]], progress=False)
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "peak_rss_mb": peak_rss_mib(),
                   "map_shape": list(prediction.anomaly_maps[0].shape), "label": bool(prediction.labels[0])}}))
"""


def large_image(path: Path, side: int, seed: int, colour: bool = True) -> None:
    """A ``side`` x ``side`` RGB (or grey) texture (smooth noise plus grain), written uncompressed (BMP)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((side // 64, side // 64, 3), dtype=np.float32)
    smooth = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR))
    grain = rng.integers(0, 32, size=(side, side, 1), dtype=np.uint8)
    pixels = np.minimum(smooth // 2 + 64 + grain, 255).astype(np.uint8)
    Image.fromarray(pixels if colour else np.ascontiguousarray(pixels[..., 0])).save(path)


def library_run(model: Path, image: Path) -> dict[str, object]:
    """Seconds, peak RSS and map shape of ``model.predict([image])`` in a fresh process."""
    run = subprocess.run(
        [sys.executable, "-c", LIBRARY_RUN.format(side=SIDE), str(model), str(image)], capture_output=True, text=True
    )
    if run.returncode != 0:
        raise SystemExit(run.stderr)
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    return {
        "seconds": round(measured["seconds"], 1),
        "seconds_per_megapixel": round(measured["seconds"] / (SIDE * SIDE / 1e6), 3),
        "peak_rss_mib": round(measured["peak_rss_mb"]),
        "map_shape": measured["map_shape"],
    }


def fitted_model(folder: Path, tile: int, overlap: int) -> Path:
    import flawscope as fs

    images = []
    for seed in range(4):
        path = folder / f"train_{seed}.bmp"
        large_image(path, 1024, seed)
        images.append(str(path))
    model = fs.create("patchcore", tile=tile, overlap=overlap, device="cpu").fit(images[:2], progress=False)
    model.calibrate(images[2:], rule="sigma", progress=False)
    return model.save(folder / "model")


def baseline_rss(model: Path) -> float:
    """Peak RSS of a process that only loads the model (torch, the backbone, the bank): what every run starts from."""
    code = "import sys, flawscope as fs; from flawscope._memory import peak_rss_mib; fs.load(sys.argv[1]); "
    code += "print(peak_rss_mib())"
    run = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, check=True)
    return float(run.stdout.strip().splitlines()[-1])


def peak_of_cli(model: Path, image: Path, out: Path) -> dict[str, float]:
    """Seconds and peak RSS of ``flawscope predict`` on the one image (the child's own)."""
    command = [
        sys.executable, "-c",
        "import sys; from flawscope._memory import peak_rss_mib; from flawscope.cli import app\n"
        "sys.argv = ['flawscope'] + sys.argv[1:]\n"
        "try:\n    app()\nfinally:\n"
        "    print('PEAK', peak_rss_mib(), file=sys.stderr)",
        "predict", str(model), str(image), "--out", str(out), "--max-pixels", str(SIDE * SIDE), "--quiet",
    ]  # fmt: skip
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak = [line for line in run.stderr.splitlines() if line.startswith("PEAK")]
    if run.returncode != 0 or not peak:
        raise SystemExit(run.stdout + run.stderr)
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(float(peak[0].split()[1]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tiling_memory.json")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="flawscope-large-"))
    model = fitted_model(folder, args.tile, args.overlap)
    results: dict[str, object] = {
        "image": f"{SIDE} x {SIDE} ({SIDE * SIDE / 1e6:.1f} MP)",
        "model": f"patchcore, {args.tile} px tiles, {args.overlap} px overlap, calibrated, defaults otherwise",
        "baseline_peak_rss_mib": round(baseline_rss(model)),
    }
    for kind, colour in (("rgb", True), ("grey", False)):
        image = folder / f"large_{kind}.bmp"
        large_image(image, SIDE, seed=9, colour=colour)
        results[kind] = {
            "library_predict": library_run(model, image),
            "cli_predict_with_overlay_and_mask": peak_of_cli(model, image, folder / f"out_{kind}"),
        }
        print(kind, results[kind], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
