"""PatchCore's speed / quality frontier on the 2-core CPU: predict images/s against image and pixel AUROC for the
exact default and the faster settings (issue 21).

Each setting is fitted and calibrated as ``flawscope benchmark`` does (ELPV mono: its module split; magnetic tile:
its MVTec layout, 10 % of the good training images held out), in a fresh process of its own, nothing else
running. The timed part is the whole predict loop over the test images -- read, resize, backbone, search, map
at the image's size, threshold and boxes (``model.predict``) -- after one untimed image, the median of three
runs; the metrics are computed afterwards from the same maps. Settings:

* ``exact``: the default (exact faiss search, torch backbone);
* ``ivf``: the inverted-file search (``search=ivf``, 8 probes of about sqrt(bank rows) clusters; its products in
  bfloat16 on a CPU that has it);
* ``openvino``: the backbone run by OpenVINO (``engine=openvino``);
* ``fast``: both (``--preset fast``); ``fast, 4 probes``: fewer probes still; ``fast, bfloat16 backbone``: OpenVINO
  computing in bfloat16 (``engine=openvino-bf16``; a CPU with AVX512-BF16 or AMX);
* ``1 % coreset``: the paper's smaller memory bank, exact search.

    .venv/bin/python benchmarks/patchcore_frontier.py --magnetic-tile ../shared/datasets/magnetic_tile

Writes ``benchmarks/results/patchcore_frontier.json`` (after every measurement) and the plot
``docs/images/patchcore_frontier.png`` (``--plot-only`` redraws it from the JSON).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "patchcore_frontier.json"
PLOT = ROOT / "docs" / "images" / "patchcore_frontier.png"

SETTINGS: dict[str, dict[str, object]] = {
    "exact": {},
    "ivf": {"search": "ivf"},
    "openvino": {"engine": "openvino"},
    "fast": {"search": "ivf", "engine": "openvino"},
    "fast, 4 probes": {"search": "ivf", "engine": "openvino", "search_probes": 4},
    "fast, bfloat16 backbone": {"search": "ivf", "engine": "openvino-bf16"},
    "1 % coreset": {"coreset_ratio": 0.01},
}
RUN = """
import json, sys, time
import numpy as np
from flawscope.metrics import auroc, pixel_metrics
from flawscope.workflow import evaluation_data, fit_and_calibrate
spec, params = sys.argv[1], json.loads(sys.argv[2])
fitted = fit_and_calibrate("patchcore", spec, {"device": "cpu", **params})
model, test = fitted.model, evaluation_data(sys.argv[1], supervised=False, seed=0)
model.predict([test.samples[0].image], progress=False)
timings = []
for _ in range(3):
    started = time.perf_counter()
    prediction = model.predict(test, progress=False)
    timings.append(time.perf_counter() - started)
seconds = sorted(timings)[1]
labels = test.labels
result = {"fit_seconds": round(fitted.fit_seconds, 1), "predict_seconds": round(seconds, 2),
          "images_per_second": round(len(test) / seconds, 1), "n_test": len(test),
          "bank_rows": int(model.memory_bank_.shape[0]),
          "image_auroc": round(auroc(labels, prediction.scores), 4)}
if all(sample.mask is not None or sample.label == 0 for sample in test.samples) and any(
        sample.mask is not None for sample in test.samples):
    masks = [sample.read_mask(anomaly_map.shape) for sample, anomaly_map in zip(test.samples, prediction.anomaly_maps)]
    pixels = pixel_metrics(prediction.anomaly_maps, masks)
    result |= {"pixel_auroc": round(pixels["pixel_auroc"], 4), "aupro": round(pixels["aupro"], 4)}
print(json.dumps(result))
"""


def measure(spec: str, params: dict[str, object]) -> dict[str, object]:
    """One setting fitted and timed in a fresh process."""
    run = subprocess.run(
        [sys.executable, "-c", RUN, spec, json.dumps(params)], capture_output=True, text=True, cwd=ROOT
    )
    if run.returncode != 0:
        raise SystemExit(run.stderr)
    return json.loads(run.stdout.strip().splitlines()[-1])


def plot(results: dict[str, dict[str, dict[str, object]]]) -> None:
    """Images/s against image AUROC, one panel per data set, one marker per setting (one legend for both)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * len(results) + 1.7, 3.6))
    axes = figure.subplots(1, len(results), squeeze=False)[0]
    markers = "osDv^P*X"
    for axis, (data, settings) in zip(axes, results.items()):
        for index, (name, row) in enumerate(settings.items()):
            point = (row["images_per_second"], row["image_auroc"])
            axis.scatter(*point, marker=markers[index % len(markers)], color=f"C{index}", label=name)
        axis.set(xlabel="predict images/s (2-core CPU)", ylabel="image AUROC", title=data)
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1 - 1.7 / figure.get_figwidth(), 1))
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--magnetic-tile", type=Path, help="Also run on this MVTec-layout category.")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--plot-only", action="store_true", help="Redraw the plot from the saved results.")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(RESULTS.read_text()))
        return
    data = {"elpv-mono": "elpv:mono"}
    if args.magnetic_tile:
        data["magnetic_tile"] = str(args.magnetic_tile)
    # a run of some settings replaces theirs and keeps the others' saved rows
    results: dict[str, dict[str, dict[str, object]]] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name, spec in data.items():
        for setting in args.settings:
            row = {"params": SETTINGS[setting], **measure(spec, SETTINGS[setting])}
            results.setdefault(name, {})[setting] = row
            print(name, setting, row, flush=True)
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    plot(results)


if __name__ == "__main__":
    main()
