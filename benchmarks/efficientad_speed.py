"""EfficientAD-S latency and throughput on 256 x 256 images: flawscope against anomalib 2.x.

Latency does not depend on what was learnt, so flawscope's model is trained for one step on
synthetic images and anomalib's ``EfficientAdModel`` is used untrained (its map normalisation
set to non-zero values so the normal inference path runs). Both get the same 256 x 256 input.
flawscope runs in float32, bfloat16 and int8 (``precision``).

    .venv/bin/python benchmarks/efficientad_speed.py --impl flawscope
    .anomalib-venv/bin/python benchmarks/efficientad_speed.py --impl anomalib   # see anomalib_patchcore.py

``network_ms``: the networks and the map on a ready tensor (teacher, student, autoencoder,
normalisation, padding, upsampling); ``predict_ms`` (flawscope only): ``model.predict`` of one
image array, resizing and the map at the image's size included. Median of ``--repeats`` after
two warm-up calls, batch 1; ``images_per_second`` at batch 8. Writes
``benchmarks/results/efficientad_speed_<impl>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import median_seconds  # noqa: E402


def median_ms(call: Callable[[], object], repeats: int) -> float:
    with torch.inference_mode():
        return round(1000 * median_seconds(call, repeats, warmup=2), 1)


def flawscope_runs(repeats: int) -> dict:
    import flawscope as fs
    from flawscope.data.synthetic import make_texture_set

    train = make_texture_set(4, 0, size=(256, 256), seed=0)
    image = make_texture_set(1, 0, size=(256, 256), seed=1).samples[0].image
    runs = {}
    for precision in ("float32", "bfloat16", "int8"):
        model = fs.create("efficientad", steps=1, precision=precision, device="cpu").fit(train, progress=False)
        single, eight = torch.rand(1, 3, 256, 256), torch.rand(8, 3, 256, 256)
        batch_ms = median_ms(lambda: model._score_batch(eight), max(3, repeats // 4))
        runs[precision] = {
            "network_ms": median_ms(lambda: model._score_batch(single), repeats),
            "predict_ms": median_ms(lambda: model.predict([image], progress=False), repeats),
            "images_per_second": round(8000 / batch_ms, 1),
            "teacher_channels": model.teacher_.info.out_channels,
        }
        print(precision, runs[precision], flush=True)
    return runs


def anomalib_runs(repeats: int) -> dict:
    from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, EfficientAdModelSize

    runs = {}
    for channels in (384, 152):
        model = EfficientAdModel(teacher_out_channels=channels, model_size=EfficientAdModelSize.S).eval()
        with torch.no_grad():
            model.mean_std["mean"].fill_(0.1)
            model.mean_std["std"].fill_(1.0)
            for name, value in (("qa_st", 0.1), ("qb_st", 0.2), ("qa_ae", 0.1), ("qb_ae", 0.2)):
                model.quantiles[name].fill_(value)
        single, eight = torch.rand(1, 3, 256, 256), torch.rand(8, 3, 256, 256)
        batch_ms = median_ms(lambda: model(eight), max(3, repeats // 4))
        runs[f"teacher_{channels}"] = {
            "network_ms": median_ms(lambda: model(single), repeats),
            "images_per_second": round(8000 / batch_ms, 1),
            "teacher_channels": channels,
        }
        print(channels, runs[f"teacher_{channels}"], flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", choices=("flawscope", "anomalib"), required=True)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    runs = flawscope_runs(args.repeats) if args.impl == "flawscope" else anomalib_runs(args.repeats)
    payload = {
        "impl": args.impl,
        "image_size": 256,
        "batch_latency": 1,
        "batch_throughput": 8,
        "device": "cpu",
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "runs": runs,
    }
    out = ROOT / "benchmarks" / "results" / f"efficientad_speed_{args.impl}.json"
    out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
