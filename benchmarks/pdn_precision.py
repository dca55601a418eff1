"""How fast one EfficientAD-S patch description network runs at 256 px, batch 1, per number format.

A feasibility measurement for the issue's 40 ms target: the PDN-S (Table 6 of the paper) with the
student's 304 output channels, float32 and bfloat16 as flawscope scores today (channels-last),
and int8 as ``precision="int8"`` makes it (``flawscope.models.efficientad.quantize``: torch's
post-training static quantization, FX graph mode, x86 backend), calibrated on synthetic texture
images. The weights are untrained (seeded), so
``int8_relative_error`` (``|int8 - float32| / |float32|`` over the output) only says that the
quantized network computes the same function to about that precision; what int8 would cost in
AUROC needs a trained model and is not measured here.

    .venv/bin/python benchmarks/pdn_precision.py

Writes ``benchmarks/results/pdn_precision.json``.
"""

from __future__ import annotations

import copy
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import median_seconds  # noqa: E402
from flawscope.data.synthetic import make_texture_set  # noqa: E402
from flawscope.data.transforms import normalise, rgb_tensor  # noqa: E402
from flawscope.models.efficientad.pdn import IMAGENET_MEAN, IMAGENET_STD, patch_description_network  # noqa: E402
from flawscope.models.efficientad.quantize import calibrate_int8, convert_int8  # noqa: E402

SIZE = 256
REPEATS = 20


def texture_batch(count: int, seed: int) -> torch.Tensor:
    images = [
        sample.image[..., None] / np.float32(255)
        for sample in make_texture_set(count, 0, size=(SIZE, SIZE), seed=seed).samples
    ]  # uint8 H x W
    return normalise(torch.stack([rgb_tensor(image) for image in images]), IMAGENET_MEAN, IMAGENET_STD)


def quantized(network: torch.nn.Module, calibration: torch.Tensor) -> torch.nn.Module:
    """``network`` in int8 as EfficientAD's ``precision="int8"`` makes it, ranges from ``calibration``."""
    return convert_int8(calibrate_int8(network, calibration, len(calibration)))


def median_ms(call) -> float:
    with torch.inference_mode():
        return round(1000 * median_seconds(call, REPEATS, warmup=2), 1)


def main() -> None:
    torch.manual_seed(0)
    network = patch_description_network("small", 304).eval()
    image = texture_batch(1, seed=1)
    channels_last = copy.deepcopy(network).to(memory_format=torch.channels_last)
    image_last = image.contiguous(memory_format=torch.channels_last)

    def bfloat16() -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16):
            return channels_last(image_last)

    int8 = quantized(network, texture_batch(16, seed=2))
    with torch.inference_mode():
        reference, approximation = network(image), int8(image)
    result = {
        "network": "PDN-S, 304 output channels (the student), 256 x 256, batch 1",
        "float32_ms": median_ms(lambda: channels_last(image_last)),
        "bfloat16_ms": median_ms(bfloat16),
        "int8_ms": median_ms(lambda: int8(image)),
        "int8_relative_error": round(float((approximation - reference).norm() / reference.norm()), 4),
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
    }
    (ROOT / "benchmarks" / "results" / "pdn_precision.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
