"""Every registered method on the same data: one JSON and the markdown table of docs/results.md.

Each (method, dataset) pair runs in a fresh process (``flawscope benchmark``: fit, calibrate on
held-out good images, evaluate), so peak RSS is that of one whole run. Per-run JSON goes to
``benchmarks/results/<method>_<dataset>.json``; the combined results to
``benchmarks/results/all_methods.json``; the table is printed.

    .venv/bin/python benchmarks/all_methods.py --magnetic-tile ../shared/datasets/magnetic_tile
    .venv/bin/python benchmarks/all_methods.py --skip-existing      # only the missing runs
    .venv/bin/python benchmarks/all_methods.py --models padim dfr   # a subset
    .venv/bin/python benchmarks/all_methods.py --models ae_ssim --datasets magnetic_tile --magnetic-tile DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FLAWSCOPE = [sys.executable, "-m", "flawscope.cli"]


def run(model: str, data: str, name: str, skip_existing: bool) -> dict:
    out = RESULTS / f"{model}_{name}.json"
    if not (skip_existing and out.exists()):
        command = [*FLAWSCOPE, "benchmark", "--model", model, "--data", data, "--out", str(out), "--device", "cpu"]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(results: list[dict]) -> str:
    lines = [
        "| method | data | image AUROC | pixel AUROC | AUPRO | bal. acc. | fit s | predict img/s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["metrics"]
        lines.append(
            f"| {r['model']} | {r['dataset']} | {fmt(m['image_auroc'])} | {fmt(m.get('pixel_auroc'))} | "
            f"{fmt(m.get('aupro'))} | {fmt(m['balanced_accuracy'])} | {r['fit_seconds']:.0f} | "
            f"{r['predict_images_per_second']:.1f} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import flawscope as fs

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--magnetic-tile", type=Path, help="Also run on this MVTec-layout category.")
    parser.add_argument("--models", nargs="*", default=fs.list_models(), help="Methods to run (default: all).")
    parser.add_argument("--skip-existing", action="store_true", help="Reuse per-run JSON files already written.")
    parser.add_argument(
        "--datasets", nargs="*", help="Only these of elpv-mono, elpv-poly, magnetic_tile, in this order."
    )
    args = parser.parse_args()
    datasets = [("elpv:mono", "elpv-mono"), ("elpv:poly", "elpv-poly")]
    if args.magnetic_tile:
        datasets.append((str(args.magnetic_tile), "magnetic_tile"))
    if args.datasets:
        by_name = {name: data for data, name in datasets}
        datasets = [(by_name[name], name) for name in args.datasets]
    results = []
    for data, name in datasets:
        for model in args.models:
            result = run(model, data, name, args.skip_existing)
            results.append({**result, "dataset": name})
    if not args.datasets and set(args.models) == set(fs.list_models()):
        (RESULTS / "all_methods.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
