"""Build what the torch-free runtime tests check against (run in the full environment, with torch).

    python tests_runtime/make_fixture.py build/runtime-fixture

Fits and calibrates a small PatchCore on synthetic textures, exports it (ONNX + OpenVINO), writes test images
as PNG and the torch path's scores, labels and maps on them (``expected.json``, ``expected_maps.npz``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import flawscope as fs
from flawscope.data.synthetic import make_texture_set


def build(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model = fs.create("patchcore", image_size=64, coreset_ratio=0.25, device="cpu", seed=0)
    model.fit(make_texture_set(12, 0, size=(96, 96), seed=0), progress=False)
    model.calibrate(make_texture_set(20, 0, size=(96, 96), seed=4), progress=False)
    model.save(out / "model")
    graph_format = "openvino" if _has("openvino") else "onnx"
    model.export(out / "exported", graph_format)
    images = out / "images"
    images.mkdir(exist_ok=True)
    test = make_texture_set(4, 4, size=(96, 96), seed=1)
    paths = []
    for index, sample in enumerate(test.samples):
        path = images / f"{index:02d}_{sample.defect_type}.png"
        Image.fromarray(np.asarray(sample.image)).save(path)
        paths.append(path)
    prediction = model.predict(paths, progress=False)
    assert prediction.labels is not None
    expected = {
        "names": [Path(name).name for name in prediction.names],
        "scores": prediction.scores.tolist(),
        "labels": prediction.labels.tolist(),
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=2))
    np.savez(out / "expected_maps.npz", *prediction.anomaly_maps)
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "build/runtime-fixture")))
