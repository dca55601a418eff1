"""The torch-free runtime in its own slim environment (``make test-runtime``): no torch installed, an exported
model scores as the torch path did when the fixture was built (``make_fixture.py``)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(os.environ.get("FLAWSCOPE_RUNTIME_FIXTURE", "build/runtime-fixture"))


@pytest.fixture(scope="module")
def expected():
    if not (FIXTURE / "expected.json").is_file():
        pytest.fail(f"No runtime fixture at {FIXTURE}: run 'python tests_runtime/make_fixture.py {FIXTURE}' first.")
    return json.loads((FIXTURE / "expected.json").read_text())


def test_this_environment_has_no_torch():
    assert importlib.util.find_spec("torch") is None


def test_an_exported_model_scores_as_the_torch_path_did(expected):
    """On onnxruntime, the slim install (OpenVINO's parity is checked in the full environment's tests)."""
    from flawscope import runtime

    model = runtime.load(FIXTURE / "exported", "onnx")
    images = sorted((FIXTURE / "images").iterdir())
    prediction = model.predict(images, progress=False)
    np.testing.assert_allclose(prediction.scores, expected["scores"], rtol=1e-4)
    assert prediction.labels is not None and prediction.labels.tolist() == expected["labels"]
    maps = np.load(FIXTURE / "expected_maps.npz")
    for index, anomaly_map in enumerate(prediction.anomaly_maps):
        np.testing.assert_allclose(anomaly_map, maps[f"arr_{index}"], atol=1e-3)
    assert "torch" not in sys.modules


def test_the_command_line_predicts_with_an_exported_model(expected, tmp_path):
    command = [str(Path(sys.executable).parent / "flawscope"), "predict", str(FIXTURE / "exported")]
    result = subprocess.run(
        [*command, str(FIXTURE / "images"), "--out", str(tmp_path), "--format", "onnx", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(row["path"]).name for row in rows] == expected["names"]
    labels = [row["label"] == "NOT OK" for row in rows]
    assert labels == expected["labels"]
    assert all((tmp_path / row["overlay"]).is_file() and (tmp_path / row["mask"]).is_file() for row in rows)
