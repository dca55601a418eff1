"""Images per second through ``flawscope predict --ray`` against a plain ``flawscope predict``, on the same cores.

A PatchCore (defaults) fitted on 200 ELPV mono cells scores ``--images`` ELPV cells (300 x 300 px, mono and
poly, repeated in order when asked for more than there are), predictions.csv only (``--no-images``), first
plainly (one process, torch on every core), then on a local Ray started by the run (one single-threaded actor
per core). Each is timed end to end as a user runs it -- the Ray run includes starting Ray and its actors
loading the model -- and Ray's steady rate is also given (images after the first part file, over the time since).
From the steady per-core rate: images per hour per node of ``--node-cores`` cores, and nodes for 10 million
images in a 10-hour night. Writes ``benchmarks/results/ray_throughput.json``.

    .venv/bin/python benchmarks/ray_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import flawscope as fs  # noqa: E402
from flawscope.data.elpv import ELPV  # noqa: E402

FLAWSCOPE = str(Path(sys.executable).with_name("flawscope"))
NIGHT_IMAGES, NIGHT_HOURS = 10_000_000, 10


def run_predict(model: Path, listing: Path, out: Path, *extra: str) -> float:
    """Seconds of one ``flawscope predict`` over the images linked in ``listing`` (a folder)."""
    started = time.perf_counter()
    run = subprocess.run(
        [FLAWSCOPE, "predict", str(model), str(listing), "--out", str(out), "--no-images", "--quiet", *extra],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise SystemExit(run.stdout + run.stderr)
    return time.perf_counter() - started


def steady_rate(out: Path, count: int) -> float:
    """Images per second after the first part file was written (Ray's start and model loading excluded)."""
    parts = sorted((out / "parts").glob("part-*.parquet"), key=lambda part: part.stat().st_mtime)
    first, last = parts[0].stat().st_mtime, parts[-1].stat().st_mtime
    import pyarrow.parquet as pq

    first_rows = pq.read_table(parts[0]).num_rows
    return (count - first_rows) / max(last - first, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--node-cores", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ray_throughput.json")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="flawscope-ray-"))
    model = fs.create("patchcore", device="cpu").fit(ELPV("train", "mono"), progress=False)
    model.calibrate(ELPV("validation", "mono"), progress=False)
    model.save(folder / "model")
    cells = [Path(sample.image) for sample in ELPV("labelled", "all")]
    images = folder / "images"
    images.mkdir()
    for index in range(args.images):
        (images / f"{index:06d}.png").symlink_to(cells[index % len(cells)])
    cores = os.cpu_count() or 1
    plain = run_predict(folder / "model", images, folder / "plain")
    on_ray = run_predict(folder / "model", images, folder / "ray", "--ray", "local")
    steady = steady_rate(folder / "ray", args.images)
    per_core = steady / cores
    per_node_hour = per_core * args.node_cores * 3600
    results = {
        "machine_cores": cores,
        "images": args.images,
        "model": "patchcore defaults, fitted on 200 ELPV mono cells",
        "plain_images_per_s": round(args.images / plain, 1),
        "ray_images_per_s_end_to_end": round(args.images / on_ray, 1),
        "ray_images_per_s_steady": round(steady, 1),
        "ray_over_plain_end_to_end": round(plain / on_ray, 2),
        "ray_over_plain_steady": round(steady / (args.images / plain), 2),
        "fleet": {
            "images_per_s_per_core": round(per_core, 2),
            "node_cores": args.node_cores,
            "images_per_hour_per_node": round(per_node_hour),
            f"nodes_for_{NIGHT_IMAGES:,}_images_in_{NIGHT_HOURS}_h": -(
                -NIGHT_IMAGES // int(per_node_hour * NIGHT_HOURS)
            ),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
