"""The trained methods at ``recipe="long"`` (60 minutes of the 2-core CPU) beside the fast default.

Each (method, data set, recipe) runs in a fresh process, one after the other and nothing else
running (``flawscope benchmark``: fit, calibrate on held-out good images, evaluate), and writes
``benchmarks/results/long_recipe/<method>_<data set>_<recipe>.json``. A run that has its file is
not repeated, so the hours of runs can be stopped and resumed. Prints the table of
docs/results.md ("Longer schedules"), with each recipe's share of the paper's training.

    .venv/bin/python benchmarks/long_recipe.py                          # every missing run
    .venv/bin/python benchmarks/long_recipe.py --models dfr simplenet --recipes long
    .venv/bin/python benchmarks/long_recipe.py --table                  # the table of what exists
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "long_recipe"
FLAWSCOPE = [sys.executable, "-m", "flawscope.cli"]
MODELS = ("dfr", "simplenet", "ae_l2", "vae", "feature_matching_ae", "ae_ssim", "efficientad")
DATASETS = {"magnetic_tile": str(ROOT.parent / "shared" / "datasets" / "magnetic_tile"), "elpv-mono": "elpv:mono"}


def result_path(model: str, dataset: str, recipe: str) -> Path:
    return RESULTS / f"{model}_{dataset}_{recipe}.json"


def run(model: str, dataset: str, recipe: str) -> None:
    out = result_path(model, dataset, recipe)
    if out.exists():
        return
    command = [*FLAWSCOPE, "benchmark", "--model", model, "--data", DATASETS[dataset], "--device", "cpu"]
    command += ["--param", f"recipe={recipe}", "--out", str(out)]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def share_of_paper(model: str, recipe: str) -> float:
    """The recipe's training (patches x epochs, epochs or steps) as a share of the paper's."""
    from flawscope.models.registry import model_entry
    from flawscope.training import training_length

    recipes = model_entry(model).detector.recipes
    return training_length(recipes[recipe]) / training_length(recipes["paper"])


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def table(models: list[str], datasets: list[str], recipes: list[str]) -> str:
    lines = [
        "| method | data | recipe | share of the paper's training | image AUROC | pixel AUROC | AUPRO | fit min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for dataset in datasets:
            for recipe in recipes:
                path = result_path(model, dataset, recipe)
                if not path.exists():
                    continue
                result = json.loads(path.read_text())
                metrics = result["metrics"]
                lines.append(
                    f"| {model} | {dataset} | {recipe} | {share_of_paper(model, recipe):.1%} | "
                    f"{fmt(metrics['image_auroc'])} | {fmt(metrics.get('pixel_auroc'))} | "
                    f"{fmt(metrics.get('aupro'))} | {result['fit_seconds'] / 60:.1f} |"
                )
    return "\n".join(lines)


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--recipes", nargs="+", default=["long", "fast"], choices=["fast", "long"])
    parser.add_argument("--table", action="store_true", help="Only print the table of the runs that exist.")
    args = parser.parse_args()
    if not args.table:
        RESULTS.mkdir(parents=True, exist_ok=True)
        for recipe in args.recipes:
            for model in args.models:
                for dataset in args.datasets:
                    run(model, dataset, recipe)
    print(table(args.models, args.datasets, ["fast", "long"]))


if __name__ == "__main__":
    main()
