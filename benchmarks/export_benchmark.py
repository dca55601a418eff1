"""Exported models against the torch path, end to end, on ELPV mono cells split by module -- as JSON.

For PatchCore (defaults) and EfficientAD-S (float32 and int8; ``--efficientad-steps`` of training, since only
the agreement of the paths matters here, not the model's own quality): fit and calibrate, export (ONNX +
OpenVINO IR), check the parity of the ONNX graph on ``--images`` test cells (``flawscope.export.check_parity``),
then for torch, onnxruntime and OpenVINO

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


# Run in a fresh interpreter: import time of the scoring side, then load, score and report peak RSS.
_PROCESS_SCRIPT = """
import json, statistics, sys, time
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
images, repeats = json.loads(sys.argv[3]), int(sys.argv[4])
measured = {"import_seconds": imported}
for batch in (1, 8):
    model.predict(images, batch_size=batch, progress=False)
    times = []
    for _ in range(repeats):
        begun = time.perf_counter()
        model.predict(images, batch_size=batch, progress=False)
        times.append(time.perf_counter() - begun)
    seconds = statistics.median(times)
    measured[f"images_per_second_batch{batch}"] = len(images) / seconds
    measured[f"ms_per_image_batch{batch}"] = 1000 * seconds / len(images)
from flawscope._memory import peak_rss_mib  # its own peak: ru_maxrss would carry the parent's into it
measured["peak_rss_mib"] = peak_rss_mib()
measured["torch_imported"] = "torch" in sys.modules
print(json.dumps(measured))
"""


def main() -> None:
    from flawscope import runtime
    from flawscope.export import check_parity
    from flawscope.metrics import auroc
    from flawscope.workflow import evaluation_data, fit_and_calibrate

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="elpv:mono")
    parser.add_argument("--images", type=int, default=32, help="test cells timed per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--efficientad-steps", type=int, default=300)
    parser.add_argument("--models", nargs="*", default=["patchcore", "efficientad_s_float32"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export.json")
    args = parser.parse_args()
    test = evaluation_data(args.data, supervised=False)
    paths = [sample.image for sample in test.samples]
    timed = [str(path) for path in paths[: args.images]]
    known = {
        "patchcore": ("patchcore", {"device": "cpu"}),
        "efficientad_s_float32": ("efficientad", {"device": "cpu", "steps": args.efficientad_steps}),
        "efficientad_s_int8": ("efficientad", {"device": "cpu", "steps": args.efficientad_steps, "precision": "int8"}),
    }
    models = {label: known[label] for label in args.models}
    results: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        for label, (name, params) in models.items():
            fitted = fit_and_calibrate(name, args.data, params, progress=False).model
            saved = fitted.save(Path(scratch) / label)
            started = time.perf_counter()
            exported = fitted.export(Path(scratch) / f"{label}.export", "openvino")
            export_seconds = time.perf_counter() - started
            parity = check_parity(fitted, exported, timed, "onnx")
            print(label, "parity", json.dumps(parity), flush=True)
            entry: dict = {"export_seconds": round(export_seconds, 1), "parity_onnx": parity, "engines": {}}
            for engine, kind in (("torch", "torch"), ("onnxruntime", "onnx"), ("openvino", "openvino")):
                # speed, memory and import time in a process of its own; the image AUROC here, one engine at a time
                row = _fresh_process(kind, saved if engine == "torch" else exported, timed, args.repeats)
                model = fitted if engine == "torch" else runtime.load(exported, kind)
                row["image_auroc"] = round(float(auroc(test.labels, model.predict(paths, progress=False).scores)), 4)
                del model
                entry["engines"][engine] = row
                print(label, engine, json.dumps(row), flush=True)
            rates = {engine: row["images_per_second_batch1"] for engine, row in entry["engines"].items()}
            entry["best_runtime_speedup_batch1"] = round(
                max(rates["onnxruntime"], rates["openvino"]) / rates["torch"], 2
            )
            results[label] = entry
            _write(args, len(paths), len(timed), results)  # after each model: a long run keeps what it measured


def _write(args: argparse.Namespace, n_test: int, n_timed: int, results: dict) -> None:
    import flawscope as fs
    from flawscope.devices import cpu_description

    payload = {
        "data": args.data,
        "n_test_images": n_test,
        "n_timed_images": n_timed,
        "efficientad_steps": args.efficientad_steps if any("efficientad" in label for label in args.models) else None,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "flawscope": fs.__version__,
            **cpu_description(),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"-> {args.out}")


def _fresh_process(kind: str, directory: Path, images: list[str], repeats: int) -> dict:
    """Speed, peak RSS and import time of one engine, measured alone in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", _PROCESS_SCRIPT, kind, str(directory), json.dumps(images), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {key: round(value, 2) if isinstance(value, float) else value for key, value in measured.items()}


if __name__ == "__main__":
    main()
