"""SimpleNet's noise deviation on real data: image / pixel AUROC for several ``noise_std``.

The paper's sigma = 0.015 is in units of its pooled WideResNet-50 features; flawscope
standardises every channel first, so the value has to be chosen again. Writes
``benchmarks/results/simplenet_noise.json``.

    .venv/bin/python benchmarks/simplenet_noise.py --data elpv:mono --noise 0.05 0.25 0.5 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import flawscope as fs
from flawscope.workflow import open_data

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="elpv:mono")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.25, 0.5, 1.0])
    parser.add_argument("--epochs", type=int, default=None, help="Default: the fast recipe's.")
    parser.add_argument("--out", type=Path, default=RESULTS / "simplenet_noise.json")
    args = parser.parse_args()
    train, test = open_data(args.data, "train"), open_data(args.data, "test")
    runs = []
    for noise in args.noise:
        model = fs.create("simplenet", noise_std=noise, epochs=args.epochs, device="cpu", seed=0)
        started = time.perf_counter()
        model.fit(train, progress=False)
        fit_seconds = time.perf_counter() - started
        metrics = fs.evaluate(model, test, progress=False).metrics
        runs.append(
            {
                "noise_std": noise,
                "fit_seconds": fit_seconds,
                "image_auroc": metrics["image_auroc"],
                "pixel_auroc": metrics.get("pixel_auroc"),
                "aupro": metrics.get("aupro"),
                "final_loss": model.loss_history_[-1],
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    args.out.write_text(json.dumps({"data": args.data, "epochs": args.epochs, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
