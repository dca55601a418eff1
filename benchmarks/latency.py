"""Single-image latency of every registered method at a given image size, as JSON.

Each method is fitted on a few synthetic textures with its default parameters (latency does not
depend on what was learnt), then one image of ``--size`` x ``--size`` pixels is scored
``--repeats`` times at batch 1 after one warm-up call; the median wall time is reported. This
is the time ``predict`` takes for one image: reading excluded, map at the image's own size
included.

    .venv/bin/python benchmarks/latency.py --size 512
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    import flawscope as fs
    from flawscope.data.synthetic import make_texture_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=fs.list_models())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency.json")
    args = parser.parse_args()
    train = make_texture_set(60, 0, size=(args.size, args.size), seed=0)
    image = make_texture_set(1, 0, size=(args.size, args.size), seed=1).samples[0].image
    results = {}
    for name in args.models:
        model = fs.create(name, device=args.device).fit(train, progress=False)
        model.predict([image], progress=False)
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            model.predict([image], progress=False)
            times.append(time.perf_counter() - started)
        results[name] = {"median_seconds": round(statistics.median(times), 4), "seconds": [round(t, 4) for t in times]}
        print(f"{name:20s} {results[name]['median_seconds'] * 1000:8.1f} ms", flush=True)
    payload = {
        "image_size": [args.size, args.size],
        "batch": 1,
        "device": args.device,
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "flawscope": fs.__version__,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
