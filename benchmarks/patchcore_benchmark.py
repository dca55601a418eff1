"""flawscope PatchCore benchmark: fit seconds, predict images/s, peak RSS and metrics, as JSON.

Each configuration runs in a fresh process (``flawscope benchmark``), so the peak RSS is that
of one whole fit + calibrate + predict run. Results go to ``benchmarks/results/``:

    .venv/bin/python benchmarks/patchcore_benchmark.py            # ELPV mono and poly
    .venv/bin/python benchmarks/patchcore_benchmark.py --magnetic-tile ../shared/datasets/magnetic_tile
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAWSCOPE = [sys.executable, "-m", "flawscope.cli"]


def run(data: str, name: str, params: list[str]) -> None:
    out = ROOT / "benchmarks" / "results" / f"patchcore_{name}.json"
    command = [*FLAWSCOPE, "benchmark", "--data", data, "--out", str(out), "--device", "cpu"]
    for param in params:
        command += ["--param", param]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--magnetic-tile", type=Path, help="Also run on this MVTec-layout category.")
    parser.add_argument("--skip-elpv", action="store_true")
    args = parser.parse_args()
    if not args.skip_elpv:
        for cell_type in ("mono", "poly"):
            run(f"elpv:{cell_type}", f"elpv-{cell_type}", [])
        for seed in (1, 2, 3):  # the coreset's start point and projection: seed-to-seed spread
            run("elpv:mono", f"elpv-mono_seed{seed}", [f"seed={seed}"])
    if args.magnetic_tile:
        run(str(args.magnetic_tile), "magnetic_tile", [])


if __name__ == "__main__":
    main()
