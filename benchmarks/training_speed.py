"""Training throughput of the from-scratch methods on the 2-core CPU, and what the hardware's candidates would give
(issue 21, part 2): optimiser steps per second as trained today (float32, NCHW) against bfloat16 autocast,
channels-last networks, and both.

The candidates are not options of the library yet: this script applies them around the one shared training step
(:class:`flawscope.training.TrainingLoop`) -- the step's loss computed under ``torch.autocast("cpu", bfloat16)``,
the loop's networks converted to channels-last before the first step -- to measure which pays before any is
built in, and whether one keeps the final quality is a separate measurement. Each (method, mode) is fitted in a
fresh process, nothing else running, on 60 good ELPV mono cells with a short schedule of the method's own recipe
(batch sizes and patch sizes as the recipe has them); the figure is the median time of the steps after the
first five (warm-up), so data preparation and calibration outside the steps do not count.

    .venv/bin/python benchmarks/training_speed.py [--methods ae_ssim efficientad] [--modes float32 bfloat16]

Writes ``benchmarks/results/training_speed.json`` (after every measurement; a run of some methods or modes keeps
the others' saved rows) with the CPU's bfloat16 capability beside the figures: bfloat16 autocast is emulated, and
slower, on a CPU without AVX512-BF16 or AMX.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

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
    "efficientad": {"steps": 30},
}
MODES = ("float32", "bfloat16", "channels_last", "bfloat16+channels_last")
RUN = """
import json, sys, time
import torch
import flawscope as fs
from flawscope.devices import native_bfloat16
from flawscope.training import TrainingLoop
from flawscope.workflow import evaluation_data

method, mode, schedule = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
step_seconds, prepared = [], set()
timed_step = TrainingLoop._step

def step(self, batch):
    if id(self) not in prepared:  # the loop's first step: apply the mode once
        prepared.add(id(self))
        if "channels_last" in mode:
            for network in self.networks:
                network.to(memory_format=torch.channels_last)
        if "bfloat16" in mode:
            loss_of = self.step_loss
            def autocast_loss(batch):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return loss_of(batch)
            self.step_loss = autocast_loss
    started = time.perf_counter()
    loss = timed_step(self, batch)
    step_seconds.append(time.perf_counter() - started)
    return loss

TrainingLoop._step = step
cells = evaluation_data("elpv:mono", supervised=False, seed=0)
good = [sample.image for sample in cells.samples if sample.label == 0][:60]
started = time.perf_counter()
fs.create(method, device="cpu", seed=0, **schedule).fit(good, progress=False)
steady = sorted(step_seconds[5:])
median = steady[len(steady) // 2]
print(json.dumps({"steps": len(step_seconds), "median_step_ms": round(1000 * median, 1),
                  "steps_per_second": round(1 / median, 2), "fit_seconds": round(time.perf_counter() - started, 1),
                  "native_bfloat16": native_bfloat16(), "threads": torch.get_num_threads()}))
"""


def measure(method: str, mode: str) -> dict[str, object]:
    """One method trained in one mode, in a fresh process."""
    run = subprocess.run(
        [sys.executable, "-c", RUN, method, mode, json.dumps(SCHEDULES[method])],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if run.returncode != 0:
        raise SystemExit(run.stderr)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="*", default=list(SCHEDULES), choices=list(SCHEDULES))
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, object]]] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for method in args.methods:
        for mode in args.modes:
            row = {"schedule": SCHEDULES[method], **measure(method, mode)}
            baseline = results.get(method, {}).get("float32")
            if mode != "float32" and baseline:
                row["speed_up"] = round(float(baseline["median_step_ms"]) / float(row["median_step_ms"]), 2)
            results.setdefault(method, {})[mode] = row
            print(method, mode, row, flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
