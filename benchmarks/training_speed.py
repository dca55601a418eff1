"""Training throughput of the from-scratch methods on the 2-core CPU (issue 21, part 2): optimiser steps per
second of each method's own training step, in float32 and in bfloat16 -- the methods' ``training_precision``
parameter (EfficientAD's ``precision``).

Each (method, mode) is fitted in a fresh process, nothing else running, on 60 good ELPV mono cells with a short
schedule of the method's own recipe (batch sizes and patch sizes as the recipe has them); the figure is the
median time of the steps after the first five (warm-up), so data preparation and calibration outside the steps
do not count.

    .venv/bin/python benchmarks/training_speed.py [--methods ae_ssim efficientad] [--modes float32 bfloat16]
        [--before-src OLD_CHECKOUT] [--rounds 3]

Writes ``benchmarks/results/training_speed.json`` (after every measurement; a run of some methods or modes keeps
the others' saved rows) with the CPU's bfloat16 capability beside the figures: bfloat16 autocast is emulated, and
slower, on a CPU without AVX512-BF16 or AMX. The machine's speed drifts by up to 30 % from minute to minute (a
shared VM), so every mode is measured ``--rounds`` times, the modes in turn, and the median kept.
``--before-src`` names a checkout of an earlier version of the library (e.g. ``git worktree add /tmp/before
REV``), trained as it trains by default and measured in the same rounds as ``before``.
``training_speed_candidates.json`` holds the measurement that chose what to build (bfloat16 autocast and
channels-last applied around the step from outside, commit c1ea541).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from flawscope.devices import native_bfloat16

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "training_speed.json"

# a short schedule per method, long enough for a steady median
SCHEDULES: dict[str, dict[str, object]] = {
    "ae_ssim": {"n_patches": 2000, "epochs": 1},
    "ae_l2": {"n_patches": 2000, "epochs": 1},
    "vae": {"n_patches": 2000, "epochs": 1},
    "feature_matching_ae": {"n_patches": 2000, "epochs": 1},
    "dfr": {"epochs": 2},
    "simplenet": {"epochs": 4},
    "efficientad": {"steps": 20},
}
MODES = ("float32", "bfloat16")
RUN = """
import json, sys, time
import torch
import flawscope as fs
from flawscope.devices import native_bfloat16
from flawscope.training import TrainingLoop
from flawscope.workflow import evaluation_data

method, mode, schedule = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
step_seconds = []
timed_step = TrainingLoop._step

def step(self, batch):
    started = time.perf_counter()
    loss = timed_step(self, batch)
    step_seconds.append(time.perf_counter() - started)
    return loss

TrainingLoop._step = step
cells = evaluation_data("elpv:mono", supervised=False, seed=0)
good = [sample.image for sample in cells.samples if sample.label == 0][:60]
precision = {} if mode == "before" else {"precision" if method == "efficientad" else "training_precision": mode}
started = time.perf_counter()
fs.create(method, device="cpu", seed=0, **precision, **schedule).fit(good, progress=False)
steady = sorted(step_seconds[5:])
median = steady[len(steady) // 2]
print(json.dumps({"steps": len(step_seconds), "median_step_ms": round(1000 * median, 1),
                  "steps_per_second": round(1 / median, 2), "fit_seconds": round(time.perf_counter() - started, 1),
                  "native_bfloat16": native_bfloat16(), "threads": torch.get_num_threads()}))
"""


def measure(method: str, mode: str, before_src: Path | None) -> float:
    """Median ms per step of one method trained in one mode, in a fresh process (``before``: the library under
    ``before_src``, as it trains by default)."""
    environment = dict(os.environ)
    if mode == "before" and before_src is not None:
        environment["PYTHONPATH"] = str(before_src / "src")
    run = subprocess.run(
        [sys.executable, "-c", RUN, method, mode, json.dumps(SCHEDULES[method])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
    )
    if run.returncode != 0:
        raise SystemExit(run.stderr)
    return float(json.loads(run.stdout.strip().splitlines()[-1])["median_step_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="*", default=list(SCHEDULES), choices=list(SCHEDULES))
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("--before-src", type=Path, help="A checkout of an earlier version, measured as 'before'.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of every mode in turn; the median is kept.")
    args = parser.parse_args()
    modes = [*args.modes, *(["before"] if args.before_src else [])]
    results: dict[str, dict[str, dict[str, object]]] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for method in args.methods:
        rounds: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode in modes:  # modes in turn, so a slow minute of the machine touches every mode alike
                rounds[mode].append(measure(method, mode, args.before_src))
        for mode, milliseconds in rounds.items():
            median = statistics.median(milliseconds)
            results.setdefault(method, {})[mode] = {
                "schedule": SCHEDULES[method],
                "median_step_ms": round(median, 1),
                "steps_per_second": round(1000 / median, 2),
                "rounds_ms": milliseconds,
                "native_bfloat16": native_bfloat16(),
            }
        row = results[method]
        for mode in modes:
            for reference in ("float32", "before"):
                if mode != reference and reference in row and reference in rounds:
                    speed_up = float(row[reference]["median_step_ms"]) / float(row[mode]["median_step_ms"])
                    row[mode][f"speed_up_over_{reference}"] = round(speed_up, 2)
        print(method, json.dumps(row), flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
