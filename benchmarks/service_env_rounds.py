"""The inspection station at concurrency 4 under different server environments (OpenMP's spin-wait settings
by default), interleaved with in-process ``predict`` passes against the shared machine's drift.

Each round: in a fresh process, in-process batched ``predict`` on the test cells (median of 3 passes); then
for each variant a fresh ``flawscope serve`` with the variant's environment variables added, 60 requests
of warm-up and ``--requests`` at concurrency 4 (:func:`service_benchmark.load`). A variant is
``NAME:KEY=VALUE,KEY=VALUE`` (``NAME:`` for the environment as it is).

    .venv/bin/python benchmarks/service_env_rounds.py --model SAVED_MODEL_DIR --rounds 3 \\
        default: spin30k:GOMP_SPINCOUNT=30000 spin3k:GOMP_SPINCOUNT=3000 passive:OMP_WAIT_POLICY=PASSIVE

Writes ``benchmarks/results/service_env.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from flawscope.devices import cpu_description  # noqa: E402
from service_benchmark import load, start_server, test_files  # noqa: E402


def in_process_median(model: Path, images: int) -> float:
    """Median images/s of 3 batched in-process passes, in a process of its own (as a user's script runs)."""
    script = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from pathlib import Path; "
        "from service_benchmark import in_process_passes, test_files; "
        f"one = in_process_passes(Path({str(model)!r}), test_files({images})); "
        "print(sorted(one(None)[0] for _ in range(3))[1])"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return float(output.split()[-1])


def served_at_four(model: Path, env: dict[str, str], files: list[bytes], requests: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        process, url = start_server(model, Path(folder), env)
        try:
            load(url, files, 4, 60, process.pid)
            return load(url, files, 4, requests, process.pid)
        finally:
            process.terminate()
            process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", help="NAME:KEY=VALUE,... (NAME: for no change).")
    parser.add_argument("--model", type=Path, required=True, help="A saved, calibrated model to serve.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "service_env.json")
    args = parser.parse_args()
    variants = {}
    for variant in args.variants:
        name, _, pairs = variant.partition(":")
        variants[name] = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    files = test_files(args.images)
    rounds = []
    for number in range(args.rounds):
        entry: dict = {"round": number, "in_process_batched": in_process_median(args.model, args.images)}
        for name, env in variants.items():
            entry[name] = served_at_four(args.model, env, files, args.requests)
        rounds.append(entry)
        print(json.dumps(entry), flush=True)
    medians = {name: statistics.median(entry[name]["images_per_second"] for entry in rounds) for name in variants}
    in_process = statistics.median(entry["in_process_batched"] for entry in rounds)
    result = {
        "how": f"benchmarks/service_env_rounds.py {' '.join(sys.argv[1:])}, {datetime.date.today()}",
        "machine": cpu_description(),
        "variants": variants,
        "rounds": rounds,
        "median_in_process_batched": in_process,
        "median_served_c4": medians,
        "median_ratio": {
            name: round(statistics.median(e[name]["images_per_second"] / e["in_process_batched"] for e in rounds), 3)
            for name in variants
        },
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
