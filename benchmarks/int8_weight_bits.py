"""What 7-bit int8 weights cost against 8-bit ones: the shipped, trained PDN-S teacher on ELPV mono cells.

``precision="int8"`` quantizes weights to -63..63 so that CPUs without VNNI do not saturate their 16-bit
intermediate sums (``flawscope.models.efficientad.quantize``). This measures the price of that bit: the
teacher quantized with 8-bit and with 7-bit weights (activations as ever; calibrated on 32 training cells),
its output on 32 test cells against float32's, computed in the QDQ form (exact integer arithmetic, so no
CPU's saturation enters the comparison): relative RMS error and correlation.

    .venv/bin/python benchmarks/int8_weight_bits.py

Writes ``benchmarks/results/int8_weight_bits.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from flawscope.data.io import read_image  # noqa: E402
from flawscope.data.transforms import normalise, resize_image  # noqa: E402
from flawscope.devices import cpu_description  # noqa: E402
from flawscope.models.efficientad import quantize  # noqa: E402
from flawscope.models.efficientad.pdn import IMAGENET_MEAN, IMAGENET_STD, load_teacher  # noqa: E402
from flawscope.workflow import open_data  # noqa: E402

SIZE = 256
N_IMAGES = 32
WEIGHT_RANGES = {"8-bit weights": (-128, 127), "7-bit weights (flawscope)": (-63, 63)}


def _cells(split: str) -> torch.Tensor:
    samples = list(open_data("elpv:mono", split))[:N_IMAGES]
    cells = torch.stack([resize_image(read_image(sample.image), SIZE) for sample in samples])
    return normalise(cells, IMAGENET_MEAN, IMAGENET_STD)


def main() -> None:
    calibration, images = _cells("train"), _cells("test")
    teacher = load_teacher().network.eval()
    with torch.no_grad():
        reference = teacher(images)
    results = {}
    for label, weight_range in WEIGHT_RANGES.items():
        quantize.WEIGHT_RANGE = weight_range
        int8 = quantize.convert_int8(quantize.calibrate_int8(teacher, calibration, 8))
        with torch.no_grad():
            output = quantize.qdq_network(int8)(images)
        results[label] = {
            "relative_rms_error": float((output - reference).square().mean().sqrt() / reference.square().mean().sqrt()),
            "correlation": float(np.corrcoef(output.flatten().numpy(), reference.flatten().numpy())[0, 1]),
        }
        print(label, results[label])
    out = ROOT / "benchmarks" / "results" / "int8_weight_bits.json"
    payload = {"data": "elpv:mono", "n_images": N_IMAGES, "image_size": SIZE, "machine": cpu_description()}
    out.write_text(json.dumps(payload | {"results": results}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
