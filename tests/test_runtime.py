"""Export and the torch-free runtime: resizing as torch does, the command line, metadata checks, no torch."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import flawscope as fs
from flawscope import runtime
from flawscope.cli import app
from flawscope.data.synthetic import make_texture_set
from flawscope.data.transforms import resize_image as torch_resize_image
from flawscope.errors import ConfigError, DataError, ModelFileError, NotFittedError
from flawscope.export import check_parity
from flawscope.maps import blur_matrix, upsample_maps
from flawscope.resize import resize_image, resize_map

runner = CliRunner()


@pytest.mark.parametrize(
    ("shape", "size"),
    [((300, 300, 1), (224, 224)), ((96, 96, 3), (64, 64)), ((64, 64, 1), (96, 96)), ((80, 130, 3), (64, 200))],
)
def test_numpy_resize_is_torchs_antialiased_bilinear(shape, size):
    image = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    np.testing.assert_allclose(resize_image(image, size), torch_resize_image(image, size).numpy(), atol=3e-7)


@pytest.mark.parametrize(("shape", "size"), [((28, 28), (300, 300)), ((64, 64), (40, 90)), ((13, 7), (13, 7))])
def test_numpy_map_resize_is_torchs_bilinear(shape, size):
    anomaly_map = np.random.default_rng(1).normal(0, 5, shape).astype(np.float32)
    expected = upsample_maps(torch.from_numpy(anomaly_map)[None], size)[0].numpy()
    np.testing.assert_allclose(resize_map(anomaly_map, size), expected, atol=1e-5)


def test_overlays_use_matplotlibs_jet_without_matplotlib():
    from matplotlib import colormaps

    from flawscope.report import _jet_table

    np.testing.assert_allclose(_jet_table(), colormaps["jet"](np.arange(256))[:, :3], atol=1e-7)


@pytest.fixture(scope="module")
def part_folder(tmp_path_factory):
    """Good and defective textures as PNG files (one of another size than the training images)."""
    folder = tmp_path_factory.mktemp("parts")
    images = make_texture_set(3, 3, size=(96, 96), seed=1)
    for index, sample in enumerate(images.samples):
        Image.fromarray(sample.image).save(folder / f"{index}_{sample.defect_type}.png")
    Image.fromarray(make_texture_set(1, 0, size=(72, 120), seed=2).samples[0].image).save(folder / "wide.png")
    return folder


@pytest.fixture(scope="module")
def exported(station_model, part_folder, tmp_path_factory):
    """The station's PatchCore exported (ONNX) by the command line, with a parity check on the part images."""
    out = tmp_path_factory.mktemp("exported") / "tiles.onnx"
    result = runner.invoke(app, ["export", str(station_model), "--out", str(out), "--check", str(part_folder)])
    assert result.exit_code == 0, result.output
    return out


def test_export_records_what_the_runtime_needs_and_proves_parity(exported, station_model):
    from flawscope.serialization import content_hash

    metadata = runtime.read_metadata(exported)
    assert metadata["model"]["method"] == "patchcore" and metadata["model"]["content_hash"] == content_hash(
        station_model
    )
    assert (
        metadata["graph"]["opset"] == 18 and metadata["graph"]["exporter"]["torch"] == torch.__version__.split("+")[0]
    )
    detector = fs.load(station_model)
    assert metadata["postprocess"]["threshold"] == detector.threshold_  # beside the graph, not inside it
    assert metadata["input"]["size"] == [96, 96]
    (parity,) = json.loads((exported / "parity.json").read_text())
    assert parity["passed"] and parity["n_images"] == 7 and parity["labels_differing"] == 0


def test_predict_on_an_exported_model_writes_what_the_fitted_model_writes(
    exported, station_model, part_folder, tmp_path
):
    rows = {}
    for name, model in (("fitted", station_model), ("exported", exported)):
        result = runner.invoke(app, ["predict", str(model), str(part_folder), "--out", str(tmp_path / name), "--quiet"])
        assert result.exit_code == 0, result.output
        with open(tmp_path / name / "predictions.csv") as handle:
            rows[name] = list(csv.DictReader(handle))
    assert [row["label"] for row in rows["exported"]] == [row["label"] for row in rows["fitted"]]
    assert {row["label"] for row in rows["fitted"]} == {"OK", "NOT OK"}
    np.testing.assert_allclose(
        [float(row["score"]) for row in rows["exported"]], [float(row["score"]) for row in rows["fitted"]], rtol=1e-4
    )
    result = runner.invoke(app, ["predict", str(exported), str(part_folder), "--out", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 2 and "takes no --device" in result.output


def test_the_threshold_stays_adjustable_after_export(exported, station_model):
    good = make_texture_set(8, 0, size=(96, 96), seed=7)
    model = runtime.load(exported)
    detector = fs.load(station_model)
    model.calibrate(good, rule="sigma", k=2.0, progress=False)
    detector.calibrate(good, rule="sigma", k=2.0, progress=False)
    assert model.threshold_ == pytest.approx(detector.threshold_, rel=1e-4)
    assert model.pixel_threshold_ == pytest.approx(detector.pixel_threshold_, rel=1e-4)


def test_the_runtime_imports_and_scores_without_torch(exported, part_folder):
    script = (
        "import sys; from flawscope import runtime; "
        f"p = runtime.load({str(exported)!r}).predict({str(part_folder)!r}, progress=False); "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(len(p))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "7"


def test_a_damaged_metadata_file_is_named(exported, tmp_path):
    import shutil

    copy = shutil.copytree(exported, tmp_path / "copy")
    metadata = json.loads((copy / "metadata.json").read_text())
    (copy / "metadata.json").write_text(json.dumps({**metadata, "format_version": 99}))
    with pytest.raises(ModelFileError, match="export format version 99"):
        runtime.load(copy)
    del metadata["postprocess"]["threshold"]
    (copy / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelFileError, match=r"lacks postprocess\.threshold"):
        runtime.load(copy)
    (copy / "metadata.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"metadata\.json cannot be read"):
        runtime.load(copy)
    with pytest.raises(ModelFileError, match=r"no metadata\.json"):
        runtime.load(tmp_path)
    with pytest.raises(ConfigError, match="not openvino"):
        runtime.load(exported, "openvino")
    with pytest.raises(ModelFileError, match="It is an exported model"):
        fs.load(exported)


def test_export_refuses_what_it_cannot_do(fitted_patchcore, tmp_path):
    with pytest.raises(ConfigError, match="must be one of"):
        fitted_patchcore.export(tmp_path, "tflite")
    with pytest.raises(NotFittedError):
        fs.create("padim").export(tmp_path)
    dictionary = fs.create("feature_dictionary")
    assert "its own size" in dictionary._export_refusal("onnx")


def test_a_detector_scores_after_an_export_traced_its_smoothing_first(tmp_path):
    """The smoothing matrices are cached: the first built while an export traces the map (a fresh cache, as in a
    process that exports before it predicts: ``flawscope export --check``) must not be the trace's fake tensor."""
    model = fs.create("patchcore", image_size=64, coreset_ratio=0.25, device="cpu", seed=0)
    model.fit(make_texture_set(6, size=(64, 64), seed=0), progress=False)
    images = [sample.image for sample in make_texture_set(2, 2, size=(64, 64), seed=1).samples]
    blur_matrix.cache_clear()
    directory = model.export(tmp_path / "exported")
    assert check_parity(model, directory, images)["passed"]
    assert len(model.predict(images, progress=False)) == len(images)


def test_a_model_that_keeps_the_aspect_ratio_exports_at_its_training_images_size(tmp_path):
    train = make_texture_set(8, 0, size=(64, 160), seed=0)
    model = fs.create("patchcore", image_size=64, coreset_ratio=0.25, input_shape="aspect", device="cpu", seed=0)
    model.fit(train, progress=False)
    directory = model.export(tmp_path / "exported")
    metadata = runtime.read_metadata(directory)
    assert metadata["input"]["size"] == [64, 160] and metadata["input"]["aspect_short_side"] == 64
    images = [sample.image for sample in make_texture_set(2, 2, size=(64, 160), seed=1).samples]
    images.append(make_texture_set(1, 0, size=(128, 320), seed=2).samples[0].image)  # same ratio, larger
    assert check_parity(model, directory, images)["passed"]
    tall = make_texture_set(1, 0, size=(100, 60), seed=2).samples[0].image
    with pytest.raises(DataError, match="keeps the aspect ratio"):
        runtime.load(directory).predict([tall], progress=False)
    skipped = runtime.load(directory).predict([tall, images[0]], on_error="skip", progress=False)
    assert len(skipped) == 1 and len(skipped.errors) == 1  # one image of another shape does not stop the rest
