"""Why the station scores on one model thread: torch's operators run slower on a second thread once the first
has an OpenMP team.

PatchCore's default backbone (EfficientNet-Lite0, stages 2 and 3, the shipped ImageNet weights), one
224 x 224 image per forward pass, timed in a fresh process each way:

- ``first_thread_only``: the model is built and run on one thread (not the main one), nothing else runs torch;
- ``second_thread``: the main thread runs a forward pass first (as a server does when it loads a model there),
  then another thread times its own passes -- a station's old worker thread.

Median of 5 rounds of 40 passes. Writes ``benchmarks/results/thread_teams.json`` (or ``--out``).

    .venv/bin/python benchmarks/thread_teams.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("first_thread_only", "second_thread")


def forward_ms(rounds: int = 5, passes: int = 40) -> list[float]:
    """Milliseconds per forward pass, one figure per round, on the calling thread."""
    import torch

    from flawscope.features.extractor import FeatureExtractor

    extractor = FeatureExtractor("tf_efficientnet_lite0", [2, 3]).eval()
    image = torch.randn(1, 3, 224, 224)  # zero mean, unit spread: as a normalised image (uniform [0, 1) runs slower)
    figures = []
    with torch.inference_mode():
        extractor(image)
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(passes):
                extractor(image)
            figures.append(round(1000 * (time.perf_counter() - started) / passes, 2))
    return figures


def measure(mode: str) -> list[float]:
    """``forward_ms`` on a new thread; for ``second_thread`` after the main thread has run torch itself."""
    if mode == "second_thread":
        forward_ms(rounds=1, passes=5)
    result: list[float] = []
    thread = threading.Thread(target=lambda: result.extend(forward_ms()))
    thread.start()
    thread.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one measurement, in this process
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "thread_teams.json")
    args = parser.parse_args()
    if args.mode:
        sys.path.insert(0, str(ROOT / "src"))
        print(json.dumps(measure(args.mode)))
        return
    result: dict = {"backbone": "tf_efficientnet_lite0, stages [2, 3], batch 1, 224 x 224", "ms_per_forward": {}}
    for mode in MODES:
        output = subprocess.run(
            [sys.executable, __file__, "--mode", mode], check=True, capture_output=True, text=True
        ).stdout
        figures = json.loads(output.strip().splitlines()[-1])
        result["ms_per_forward"][mode] = {"rounds": figures, "median": sorted(figures)[len(figures) // 2]}
        print(mode, result["ms_per_forward"][mode], flush=True)
    speeds = result["ms_per_forward"]
    result["second_over_first"] = round(speeds["second_thread"]["median"] / speeds["first_thread_only"]["median"], 2)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
