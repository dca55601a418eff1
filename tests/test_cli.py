import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import flawscope as fs
from flawscope.cli import app
from flawscope.data.synthetic import write_mvtec_layout

runner = CliRunner()


def fit_cli(data, out, *options):
    """``flawscope fit --data DATA --out OUT --device cpu --quiet OPTIONS...``."""
    return runner.invoke(app, ["fit", "--data", str(data), "--out", str(out), "--device", "cpu", "--quiet", *options])


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return write_mvtec_layout(
        tmp_path_factory.mktemp("data") / "texture", n_train=14, n_test_good=5, n_test_defective=6, size=(96, 96)
    )


@pytest.fixture(scope="module")
def model_dir(category, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "model"
    result = fit_cli(
        str(category), str(out), "--param", "image_size=96", "--param", "coreset_ratio=0.25", "--val-fraction", "0.25"
    )
    assert result.exit_code == 0, result.output
    return out


def test_fit_writes_a_calibrated_model(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"] == "patchcore" and config["params"]["image_size"] == 96
    calibration = config["calibration"]["calibration"]
    assert calibration["rule"] == "fpr" and calibration["target_fpr"] == 0.05  # the default rule
    assert config["calibration"]["threshold"] > 0 and len(calibration["good_scores"]) == calibration["n_good"] == 4
    assert (model_dir / "model.safetensors").stat().st_size > 0


def test_fit_takes_a_preset_which_params_override_and_names_the_presets_there_are(category, tmp_path):
    pytest.importorskip("openvino", reason="the 'openvino' extra is not installed")
    options = ["--preset", "fast", "--param", "image_size=64", "--param", "search_probes=3", "--val-fraction", "0.25"]
    result = fit_cli(category, tmp_path / "fast", *options)
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "fast" / "config.json").read_text())["params"]
    assert (params["search"], params["engine"], params["search_probes"]) == ("ivf", "openvino", 3)
    refused = fit_cli(category, tmp_path / "no", "--preset", "fastest")
    assert refused.exit_code == 2 and "patchcore has no preset 'fastest'; its presets: ['fast']" in refused.output
    refused = fit_cli(category, tmp_path / "no", "--model", "padim", "--preset", "fast")
    assert refused.exit_code == 2 and "padim has no preset 'fast'; it has none" in refused.output


def test_predict_writes_overlays_masks_and_csv_and_survives_bad_files(model_dir, category, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    defective = sorted((category / "test" / "defect").iterdir())[:2]
    good = sorted((category / "test" / "good").iterdir())[:1]
    for path in defective + good:
        (inputs / path.name).write_bytes(path.read_bytes())
    (inputs / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(model_dir), str(inputs), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    broken = next(r for r in rows if r["path"].endswith("broken.png"))
    assert "broken.png" in broken["error"] and broken["score"] == ""
    scored = [r for r in rows if not r["error"]]
    assert {r["label"] for r in scored} <= {"OK", "NOT OK"}
    for row in scored:
        overlay = np.asarray(Image.open(out / row["overlay"]))
        mask = np.asarray(Image.open(out / row["mask"]))
        assert overlay.shape == (96, 96, 3) and mask.shape == (96, 96)
        assert isinstance(json.loads(row["boxes"]), list)
    labels = {Path(row["path"]).name: row["label"] for row in scored}
    assert any(labels[path.name] == "NOT OK" for path in defective), "a defective image is flagged"
    assert all(json.loads(row["boxes"]) for row in scored if row["label"] == "NOT OK" and "defect" in row["path"])
    bare = tmp_path / "bare"
    result = runner.invoke(app, ["predict", str(model_dir), str(inputs), "--out", str(bare), "--no-images", "--quiet"])
    assert result.exit_code == 0, result.output
    with open(bare / "predictions.csv") as handle:
        bare_rows = list(csv.DictReader(handle))
    assert sorted(path.name for path in bare.iterdir()) == ["predictions.csv"]
    assert [(r["path"], r["score"], r["label"], r["boxes"], r["overlay"]) for r in bare_rows] == [
        (r["path"], r["score"], r["label"], r["boxes"], "") for r in rows
    ]


def test_evaluate_without_masks_gives_image_metrics_and_a_note(model_dir, category, tmp_path):
    labels_only = tmp_path / "labels_only"
    for sub in ("train", "test"):
        shutil.copytree(category / sub, labels_only / sub)
    result = runner.invoke(
        app, ["evaluate", str(model_dir), "--data", str(labels_only), "--out", str(tmp_path / "eval"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["image_auroc"] >= 0.9 and "pixel_auroc" not in metrics
    assert "no ground-truth masks" in metrics["notes"][0] and "no ground-truth masks" in result.output


def test_evaluate_writes_metrics_and_report(model_dir, category, tmp_path):
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", str(model_dir), "--data", str(category), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "image_auroc",
        "image_aupr",
        "f1_max",
        "balanced_accuracy",
        "confusion_matrix",
        "threshold",
        "pixel_auroc",
        "aupro",
    ):
        assert key in metrics
    assert metrics["image_auroc"] >= 0.9 and metrics["pixel_auroc"] >= 0.9
    assert "defect" in metrics["per_defect_type"]
    html = (out / "report.html").read_text()
    assert "ROC" in html and "data:image/png;base64," in html
    overlap = metrics["region_overlap"]
    assert overlap["fpr"] == [0.01, 0.05, 0.1, 0.2, 0.3] and len(overlap["overlap"]) == 3
    assert all(a <= b for a, b in zip(overlap["overlap"][0], overlap["overlap"][2]))  # 25 % <= 75 % quantile
    assert "Per-region overlap of the defects" in html


def test_fit_takes_the_autoencoder_recipe(category, tmp_path):
    small = ["--param", "image_size=64", "--param", "patch_size=32", "--param", "n_patches=32", "--param", "epochs=1"]
    result = fit_cli(
        str(category), str(tmp_path / "ae"), "--model", "ae_l2", "--recipe", "paper", "--val-fraction", "0.3", *small
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ae" / "config.json").read_text())["params"]["recipe"] == "paper"
    assert "threshold: aims at 5.00% false alarms" in result.output  # the default rule, stated in false alarms
    assert "warning: L2Autoencoder: 4 good calibration images cannot show" in " ".join(result.output.split())
    result = runner.invoke(
        app, ["fit", "--data", str(category), "--out", str(tmp_path / "pc"), "--recipe", "paper", "--quiet"]
    )
    assert result.exit_code == 2 and "recipe" in result.output


@pytest.mark.slow
def test_distill_teacher_then_fit_efficientad_with_it(category, tmp_path):
    teacher = tmp_path / "teacher.safetensors"
    result = runner.invoke(
        app,
        [
            "distill-teacher",
            "--images",
            str(category),
            "--out",
            str(teacher),
            "--steps",
            "2",
            "--image-size",
            "128",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "PDN-small teacher (152 channels)" in result.output and teacher.is_file()
    result = fit_cli(
        str(category),
        str(tmp_path / "ead"),
        "--model",
        "efficientad",
        "--param",
        f"teacher={teacher}",
        "--param",
        "image_size=128",
        "--param",
        "steps=2",
        "--val-fraction",
        "0.3",
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ead" / "config.json").read_text())["params"]["teacher"] == str(teacher)
    result = runner.invoke(
        app,
        [
            "quantize",
            str(tmp_path / "ead"),
            "--data",
            str(category),
            "--out",
            str(tmp_path / "ead8"),
            "--val-fraction",
            "0.3",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    quantized = fs.load(tmp_path / "ead8")
    assert quantized.precision == "int8" and quantized.is_calibrated and quantized.calibration_["rule"] == "fpr"
    assert (
        quantized.calibration_["n_images"] == fs.load(tmp_path / "ead").calibration_["n_images"]
    )  # the same held-out images
    result = runner.invoke(app, ["distill-teacher", "--images", str(tmp_path / "nothing"), "--out", str(teacher)])
    assert result.exit_code == 2 and "neither a folder nor a data spec" in result.output


def test_cam_classifier_fits_on_labelled_images_and_is_evaluated_on_unseen_ones(category, tmp_path):
    out = tmp_path / "cam"
    result = fit_cli(
        str(category), str(out), "--model", "cam_classifier", "--param", "image_size=64", "--param", "max_epochs=1"
    )
    assert result.exit_code == 0, result.output
    assert "on 9 labelled images (80 %" in result.output  # 11 test images of the category: 9 to learn, 2 to judge
    result = runner.invoke(
        app, ["evaluate", str(out), "--data", str(category), "--out", str(tmp_path / "eval"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == 2 and metrics["threshold_source"] == "calibrated (argmax)"
    assert "accuracy" in metrics and "box_iou_mean" in metrics
    assert "Confusion matrix" in (tmp_path / "eval" / "report.html").read_text()


def test_clear_errors_for_bad_input(tmp_path):
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    result = runner.invoke(app, ["fit", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m"), "--quiet"])
    assert result.exit_code == 2 and "holds no images" in result.output
    result = runner.invoke(
        app, ["fit", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m"), "--model", "patchcor"]
    )
    assert result.exit_code == 2
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "nomodel"), "--data", str(tmp_path), "--out", str(tmp_path / "e")]
    )
    assert result.exit_code == 2 and "config.json is missing" in result.output


def test_list_models():
    result = runner.invoke(app, ["list-models"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == fs.list_models()
    assert all(len(line.split()) > 3 for line in lines)  # every method has its one-line summary
    assert "``" not in result.output  # plain text, not reStructuredText
    assert "[quantizable]" in next(line for line in lines if line.startswith("efficientad"))


def test_quantize_refuses_a_method_other_than_efficientad(model_dir, category, tmp_path):
    result = runner.invoke(app, ["quantize", str(model_dir), "--data", str(category), "--out", str(tmp_path / "q")])
    assert result.exit_code == 2 and "holds a patchcore; only efficientad can be quantized" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "q").exists()


def test_errors_print_bracketed_text_as_it_is(tmp_path):
    missing = tmp_path / "[red]line 3"  # rich would read "[red]" as a colour and drop it
    result = runner.invoke(
        app, ["fit", "--data", str(missing), "--out", str(tmp_path / "m"), "--device", "cpu", "--quiet"]
    )
    assert result.exit_code == 2 and "[red]line 3" in "".join(result.output.split("\n"))
