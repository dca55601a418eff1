"""The library policy the CLI, the benchmarks and the service share (flawscope.workflow)."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import flawscope as fs
from flawscope.data.synthetic import write_mvtec_layout
from flawscope.errors import ConfigError
from flawscope.folders import predict_to_folder
from flawscope.workflow import (
    ThresholdRule,
    evaluation_data,
    fit_and_calibrate,
    parse_params,
    run_benchmark,
    training_data,
)

SMALL_PATCHCORE = {"image_size": 64, "coreset_ratio": 0.25, "device": "cpu"}


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return write_mvtec_layout(
        tmp_path_factory.mktemp("data") / "texture", n_train=20, n_test_good=4, n_test_defective=4, size=(64, 64)
    )


def test_parse_params_reads_json_values_and_keeps_strings():
    assert parse_params(["coreset_ratio=0.01", "layers=[2,3]", "backbone=resnet18", "reweight-neighbours=5"]) == {
        "coreset_ratio": 0.01,
        "layers": [2, 3],
        "backbone": "resnet18",
        "reweight_neighbours": 5,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_params(["coreset_ratio"])


def test_training_and_test_data_of_unsupervised_and_supervised_methods(category):
    unsupervised = training_data(category, supervised=False, validation_fraction=0.25, seed=1)
    assert (len(unsupervised.train), len(unsupervised.calibration)) == (15, 5)
    assert len(evaluation_data(category, supervised=False)) == 8
    learn = training_data(category, supervised=True, seed=1)
    judged = evaluation_data(category, supervised=True, seed=1)
    assert learn.calibration is None and len(learn.train) + len(judged) == 8
    assert not {s.name for s in learn.train} & {s.name for s in judged}
    assert set(judged.labels) == {0, 1}  # stratified: both kinds in the 20 %


def test_fit_and_calibrate_returns_the_model_and_the_datasets_it_used(category):
    fitted = fit_and_calibrate(
        "patchcore",
        category,
        SMALL_PATCHCORE,
        validation_fraction=0.25,
        threshold=ThresholdRule("fpr", target_fpr=0.1),
        progress=False,
    )
    assert fitted.model.calibration_["rule"] == "fpr" and fitted.model.calibration_["n_images"] == 5
    assert len(fitted.data.train) == 15 and len(fitted.data.calibration) == 5 and fitted.fit_seconds > 0


def test_run_benchmark_writes_the_benchmark_record(category):
    result = run_benchmark("patchcore", category, SMALL_PATCHCORE)
    record = result.to_json()
    assert record["n_train"] + record["n_calibration"] == 20 and record["n_test"] == len(result.test) == 8
    assert record["metrics"]["image_auroc"] >= 0.8 and record["peak_rss_mib"] > 0
    assert record["machine"]["device"] == "cpu"
    assert record["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # results say their CPU
    assert isinstance(record["machine"]["bfloat16_native"], bool)
    json.dumps(record)  # JSON-ready


def test_predict_to_folder_writes_one_row_per_input(category, tmp_path):
    fitted = fit_and_calibrate("patchcore", category, SMALL_PATCHCORE, progress=False)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    written = predict_to_folder(fitted.model, [category / "test" / "defect", broken], tmp_path / "out", progress=False)
    assert written.n_scored == 4 and list(written.failed) == [str(broken)]
    with open(written.csv_path) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and all((tmp_path / "out" / row["overlay"]).is_file() for row in rows if not row["error"])


def test_importing_flawscope_changes_nothing_outside_it():
    """No matplotlib backend switch, no C-library look-up at import time, and a command line that needs no
    ``resource`` module (Windows has none)."""
    code = """
import ctypes.util, matplotlib, sys, torch, timm  # what these do at import is theirs
matplotlib.use("svg")
def refuse(name):
    raise AssertionError("find_library at import time")
ctypes.util.find_library = refuse
sys.modules["resource"] = None
import flawscope
from flawscope.cli import app
from typer.testing import CliRunner
result = CliRunner().invoke(app, ["list-models"])
assert result.exit_code == 0 and "patchcore" in result.output, result.output
assert matplotlib.get_backend() == "svg" and "matplotlib.pyplot" not in sys.modules
from flawscope._memory import peak_rss_mib
sys.platform = "win32"  # no /proc either
assert peak_rss_mib() is None
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_the_html_report_leaves_the_matplotlib_backend_alone(fitted_patchcore, texture_test, tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    report = fs.evaluate(fitted_patchcore, texture_test, progress=False)
    report.write_html(tmp_path / "report.html")
    assert matplotlib.get_backend() == before
    assert np.isfinite(report.metrics["image_auroc"])


def test_a_group_pattern_keeps_calibration_groups_apart_from_training(category):
    lots = r"texture_00(\d)\d"  # tens of the image number: a lot of ten images
    data = training_data(category, supervised=False, validation_fraction=0.25, seed=0, groups=lots)
    train_lots = {sample.group for sample in data.train}
    calibration_lots = {sample.group for sample in data.calibration}
    assert train_lots and calibration_lots and not train_lots & calibration_lots
    with pytest.raises(ConfigError, match="ELPV brings its own groups"):
        training_data("elpv:mono", supervised=False, groups=lots)
