"""Exported models against the torch path, end to end, on ELPV mono cells split by module -- as JSON.

For PatchCore (defaults) and EfficientAD-S (float32; ``--efficientad-steps`` of training, since only the
agreement of the paths matters here, not the model's own quality): fit and calibrate, export (ONNX +
OpenVINO IR), then for torch, onnxruntime and OpenVINO

* images/s of ``predict`` from image files -- read, resize, graph, maps to image size, threshold, mask,
  boxes -- at batch 1 and batch 8 on ``--images`` test cells (median of ``--repeats`` passes, one warm-up);
* image AUROC on every test cell;
* in a fresh process: the import time and the peak RSS of loading the model and scoring the timed images
  (the runtime never imports torch).

    .venv/bin/python benchmarks/export_benchmark.py
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _timing import median_seconds  # noqa: E402

# Run in a fresh interpreter: import time of the scoring side, then load, score and report peak RSS.
_PROCESS_SCRIPT = """
import json, resource, sys, time
started = time.perf_counter()
if sys.argv[1] == "torch":
    import flawscope as fs
    fs.list_models()
    imported = time.perf_counter() - started
    model = fs.load(sys.argv[2], device="cpu")
else:
    from flawscope import runtime
    imported = time.perf_counter() - started
    model = runtime.load(sys.argv[2], sys.argv[1])
model.predict(json.loads(sys.argv[3]), batch_size=8, progress=False)
print(json.dumps({"import_seconds": imported, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch_imported": "torch" in sys.modules}))
"""


def main() -> None:
    import flawscope as fs
    from flawscope import runtime
    from flawscope.metrics import auroc
    from flawscope.workflow import evaluation_data, fit_and_calibrate

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="elpv:mono")
    parser.add_argument("--images", type=int, default=32, help="test cells timed per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--efficientad-steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export.json")
    args = parser.parse_args()
    test = evaluation_data(args.data, supervised=False)
    paths = [sample.image for sample in test.samples]
    timed = [str(path) for path in paths[: args.images]]
    models = {
        "patchcore": ("patchcore", {"device": "cpu"}),
        "efficientad_s_float32": ("efficientad", {"device": "cpu", "steps": args.efficientad_steps}),
    }
    results: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        for label, (name, params) in models.items():
            fitted = fit_and_calibrate(name, args.data, params, progress=False).model
            saved = fitted.save(Path(scratch) / label)
            started = time.perf_counter()
            exported = fitted.export(Path(scratch) / f"{label}.export", "openvino")
            export_seconds = time.perf_counter() - started
            engines = {
                "torch": fitted,
                "onnxruntime": runtime.load(exported, "onnx"),
                "openvino": runtime.load(exported, "openvino"),
            }
            entry: dict = {"export_seconds": round(export_seconds, 1), "engines": {}}
            for engine, model in engines.items():
                row: dict = {}
                for batch in (1, 8):
                    seconds = median_seconds(
                        lambda m=model, b=batch: m.predict(timed, batch_size=b, progress=False), args.repeats
                    )
                    row[f"images_per_second_batch{batch}"] = round(len(timed) / seconds, 2)
                    row[f"ms_per_image_batch{batch}"] = round(1000 * seconds / len(timed), 1)
                scores = model.predict(paths, batch_size=8, progress=False).scores
                row["image_auroc"] = round(float(auroc(test.labels, scores)), 4)
                where = saved if engine == "torch" else exported
                kind = "torch" if engine == "torch" else ("onnx" if engine == "onnxruntime" else "openvino")
                row["process"] = _fresh_process(kind, where, timed)
                entry["engines"][engine] = row
                print(label, engine, json.dumps(row), flush=True)
            torch_rate = entry["engines"]["torch"]["images_per_second_batch1"]
            entry["best_runtime_speedup_batch1"] = round(
                max(entry["engines"][e]["images_per_second_batch1"] for e in ("onnxruntime", "openvino")) / torch_rate,
                2,
            )
            results[label] = entry
    payload = {
        "data": args.data,
        "n_test_images": len(paths),
        "n_timed_images": len(timed),
        "efficientad_steps": args.efficientad_steps,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "flawscope": fs.__version__},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"-> {args.out}")


def _fresh_process(kind: str, directory: Path, images: list[str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PROCESS_SCRIPT, kind, str(directory), json.dumps(images)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {key: round(value, 2) if isinstance(value, float) else value for key, value in measured.items()}


if __name__ == "__main__":
    main()
