"""EfficientAD float32 against int8 on the very same trained networks.

Loads an EfficientAD fitted in float32 (``flawscope fit --model efficientad --data DIR --out
MODEL``), evaluates it, then turns it int8 with ``EfficientAD.quantize`` (what ``fit`` with
``precision="int8"`` does after training: activation ranges from the first 32 of its training
images, map quantiles refit on its held-out images), recalibrates the threshold and evaluates
again. That equals a second fit with ``precision="int8"`` (training runs in float32 with the same
seed), so this measures only what quantization costs, for the price of one fit.

    .venv/bin/flawscope fit --model efficientad --data ../shared/datasets/magnetic_tile --out /tmp/ead --device cpu
    .venv/bin/python benchmarks/efficientad_int8.py /tmp/ead --data ../shared/datasets/magnetic_tile

Writes ``benchmarks/results/efficientad_<data>_int8.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import flawscope as fs  # noqa: E402
from flawscope.workflow import evaluation_data, training_data  # noqa: E402

VALIDATION_FRACTION = 0.1  # as `flawscope fit`


def judge(model, data: str) -> dict:
    started = time.perf_counter()
    metrics = fs.evaluate(model, evaluation_data(data, supervised=False), worst_cases=0, progress=False).metrics
    result = {key: metrics.get(key) for key in ("image_auroc", "pixel_auroc", "aupro", "balanced_accuracy")}
    result["evaluate_seconds"] = round(time.perf_counter() - started, 1)
    if "per_defect_type" in metrics:
        result["per_type_pixel"] = {
            name: round(entry["pixel_auroc"], 3)
            for name, entry in metrics["per_defect_type"].items()
            if entry.get("pixel_auroc") is not None
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="A float32 EfficientAD saved by 'flawscope fit'.")
    parser.add_argument("--data", required=True, help="The data spec it was fitted on.")
    args = parser.parse_args()
    model = fs.load(args.model, device="cpu")
    if model.precision != "float32":
        raise SystemExit(f"{args.model} was fitted with precision={model.precision!r}; this compares a float32 fit.")
    data = training_data(args.data, supervised=False, validation_fraction=VALIDATION_FRACTION, seed=model.seed)
    results = {"float32": judge(model, args.data)}
    print("float32", results["float32"], flush=True)
    quantized = model.quantize(data.train, progress=False)
    quantized.calibrate(data.calibration, rule="sigma", k=3.0, progress=False)
    results["int8"] = judge(quantized, args.data)
    print("int8", results["int8"], flush=True)
    name = Path(args.data).name if not args.data.startswith("elpv:") else args.data.replace(":", "-")
    (ROOT / "benchmarks" / "results" / f"efficientad_{name}_int8.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
