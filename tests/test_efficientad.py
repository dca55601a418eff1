"""EfficientAD and its teacher: the paper's networks, losses and map normalisation, distillation, teacher files."""

import contextlib
import copy
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

import flawscope as fs
from flawscope.data.synthetic import dead_leaves, make_texture_set
from flawscope.errors import ConfigError, DataError, ModelFileError, WeightsError
from flawscope.export import OPSET, check_parity
from flawscope.metrics import auroc
from flawscope.models.efficientad.detector import INT8_PARITY, _rescale, adjust_colour, hard_feature_loss
from flawscope.models.efficientad.pdn import (
    EfficientADAutoencoder,
    distill_teacher,
    load_teacher,
    patch_description_network,
    pdn_output_side,
    save_teacher,
    teacher_targets,
)
from flawscope.models.efficientad.quantize import (
    _convolution_input_scales,
    calibrate_int8,
    convert_int8,
    qdq_network,
)

SMALL = {"image_size": 128, "steps": 40, "learning_rate": 1e-3, "device": "cpu"}


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A PDN-S distilled for two steps: enough to test the plumbing (a different file from the default)."""
    teacher = distill_teacher(steps=2, image_size=128, batch_size=2, seed=5, progress=False)
    return save_teacher(teacher, tmp_path_factory.mktemp("teacher") / "tiny.safetensors")


def test_pdn_small_is_table_6_and_maps_256_px_to_56_x_56():
    network = patch_description_network("small", 384)
    convs = [tuple(m.weight.shape) for m in network if isinstance(m, torch.nn.Conv2d)]
    assert convs == [(128, 3, 4, 4), (256, 128, 4, 4), (256, 256, 3, 3), (384, 256, 4, 4)]
    assert network(torch.zeros(1, 3, 256, 256)).shape == (1, 384, 56, 56)
    assert pdn_output_side(256) == 56 and pdn_output_side(128) == 24


def test_pdn_medium_is_table_7():
    network = patch_description_network("medium", 384)
    convs = [tuple(m.weight.shape) for m in network if isinstance(m, torch.nn.Conv2d)]
    assert convs == [
        (256, 3, 4, 4),
        (512, 256, 4, 4),
        (512, 512, 1, 1),
        (512, 512, 3, 3),
        (384, 512, 4, 4),
        (384, 384, 1, 1),
    ]
    assert network(torch.zeros(1, 3, 256, 256)).shape == (1, 384, 56, 56)
    with pytest.raises(ConfigError, match="PDN size must be one of"):
        patch_description_network("large", 384)


def test_autoencoder_is_table_8_and_lands_on_the_pdn_grid():
    autoencoder = EfficientADAutoencoder(384, 256).eval()
    assert autoencoder.sizes == [3, 8, 15, 32, 63, 127, 56]
    assert tuple(autoencoder.encoder[-1].weight.shape) == (64, 64, 8, 8)
    assert autoencoder(torch.zeros(2, 3, 256, 256)).shape == (2, 384, 56, 56)
    assert EfficientADAutoencoder(8, 128).eval()(torch.zeros(1, 3, 128, 128)).shape == (1, 8, 24, 24)
    with pytest.raises(ConfigError, match="image_size >= 128"):
        EfficientADAutoencoder(8, 64)


def test_hard_feature_loss_keeps_the_top_tenth_of_a_percent():
    distance = torch.arange(2000, dtype=torch.float32).reshape(2, 10, 100)
    assert hard_feature_loss(distance).item() == pytest.approx(1998.5)  # 0.999 quantile = 1997.001: 1998, 1999 kept
    assert hard_feature_loss(distance, 0.99).item() == pytest.approx(np.mean(np.arange(1980, 2000)))  # from 1979.01


@pytest.mark.parametrize(
    "kind, reference", [(0, TF.adjust_brightness), (1, TF.adjust_contrast), (2, TF.adjust_saturation)]
)
def test_colour_augmentation_matches_torchvision(kind, reference):
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        adjust_colour(image, kind, 1.2), reference(image, 1.2), atol=1e-4, rtol=0
    )  # luma 0.299 vs 0.2989


def test_map_normalisation_sends_the_quantiles_to_0_and_0_1():
    quantiles = torch.tensor([2.0, 4.0])
    torch.testing.assert_close(_rescale(torch.tensor([2.0, 4.0, 3.0]), quantiles), torch.tensor([0.0, 0.1, 0.05]))


def test_teacher_targets_sit_on_the_pdn_grid():
    from flawscope.features.extractor import FeatureExtractor

    extractor = FeatureExtractor("tf_efficientnet_lite0", (2, 3))
    targets = teacher_targets(extractor, torch.rand(2, 3, 128, 128), pdn_output_side(128))
    assert targets.shape == (2, 40 + 112, 24, 24) and torch.isfinite(targets).all()


def test_teacher_targets_are_taken_at_the_centre_of_each_pdn_patch():
    class CoordinateBackbone:
        """A stand-in backbone whose stride-8 map holds each cell's centre x, in the PDN input's pixels."""

        cfg = SimpleNamespace(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

        def __call__(self, images):
            count, _, height, width = images.shape  # the PDN input shown at twice its size
            centres = 4 * torch.arange(width // 8, dtype=torch.float32) + 2
            return [centres.view(1, 1, 1, -1).expand(count, 1, height // 8, width // 8).clone()]

    targets = teacher_targets(CoordinateBackbone(), torch.zeros(1, 3, 128, 128), pdn_output_side(128))
    # output i describes input pixels 4i .. 4i + 32, centred at 4i + 16.5
    torch.testing.assert_close(targets[0, 0, 10], 4 * torch.arange(24, dtype=torch.float32) + 16.5)


def test_dead_leaves_are_seeded_images_in_the_unit_range():
    first, again = dead_leaves(np.random.default_rng(3), 64), dead_leaves(np.random.default_rng(3), 64)
    assert first.shape == (64, 64, 3) and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0 and first.std() > 0.05
    np.testing.assert_array_equal(first, again)


def test_teacher_file_round_trip_and_checks(tiny_teacher, tmp_path):
    teacher = load_teacher(tiny_teacher)
    assert teacher.info.size == "small" and teacher.info.out_channels == 152 and teacher.info.steps == 2
    assert teacher.info.data.startswith("dead leaves")
    images = torch.rand(1, 3, 128, 128)
    again = load_teacher(save_teacher(teacher, tmp_path / "again.safetensors"))
    torch.testing.assert_close(again.network(images), teacher.network(images))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelFileError, match="not a flawscope teacher file"):
        load_teacher(tmp_path / "other.safetensors")
    with pytest.raises(ModelFileError, match="No teacher file"):
        load_teacher(tmp_path / "missing.safetensors")


@pytest.mark.slow
def test_distillation_on_a_folder_lowers_the_loss(texture_train):
    teacher = distill_teacher(images=texture_train[:1], steps=30, image_size=128, batch_size=2, progress=False)
    losses = teacher.loss_history
    assert np.mean(losses[-5:]) < 0.92 * np.mean(losses[:5])  # 0.85x here
    assert "0% dead leaves" in teacher.info.data
    with pytest.raises(ConfigError, match="dead_leaves_share"):
        distill_teacher(dead_leaves_share=0.5, steps=1, image_size=128, progress=False)


@pytest.fixture(scope="module")
def float_model(texture_train, tiny_teacher):
    """A float32 EfficientAD trained 40 steps on the synthetic textures. Tests must not modify it."""
    return fs.create("efficientad", teacher=str(tiny_teacher), **SMALL).fit(texture_train, progress=False)


@pytest.mark.slow
def test_efficientad_training_lowers_the_loss_and_finds_defects(float_model, texture_test):
    model = float_model
    assert np.mean(model.loss_history_[-10:]) < 0.7 * np.mean(model.loss_history_[:10])
    prediction = model.predict(texture_test, progress=False)
    assert auroc(texture_test.labels, prediction.scores) >= 0.9
    assert prediction.anomaly_maps[0].shape == (96, 96)


def test_efficientad_needs_the_teacher_it_was_trained_with(texture_train, tiny_teacher, tmp_path):
    model = fs.create("efficientad", teacher=str(tiny_teacher), **{**SMALL, "steps": 2}).fit(
        texture_train, progress=False
    )
    saved = model.save(tmp_path / "model")
    other = save_teacher(
        distill_teacher(steps=1, image_size=128, batch_size=2, seed=9, progress=False), tmp_path / "other.safetensors"
    )
    config = saved / "config.json"
    config.write_text(config.read_text().replace(str(tiny_teacher), str(other)))
    with pytest.raises(WeightsError, match=r"fitted with pretrained weights sha256:.* but the weights found now"):
        fs.load(saved)


def test_efficientad_clear_errors(texture_train, tiny_teacher, tmp_path):
    with pytest.raises(ConfigError, match="PDN-small; size='medium' needs a PDN-medium teacher"):
        fs.create("efficientad", size="medium", teacher=str(tiny_teacher), **SMALL).fit(texture_train, progress=False)
    with pytest.raises(DataError, match="neither 'dead_leaves' nor a folder"):
        fs.create("efficientad", penalty_images=str(tmp_path), teacher=str(tiny_teacher), **SMALL).fit(
            texture_train, progress=False
        )
    with pytest.raises(DataError, match="at least 2 good images"):
        fs.create("efficientad", teacher=str(tiny_teacher), **SMALL).fit(texture_train[:1], progress=False)
    with pytest.raises(ConfigError, match="multiple of 4"):
        fs.create("efficientad", teacher=str(tiny_teacher), **{**SMALL, "image_size": 130}).fit(
            texture_train, progress=False
        )


def test_the_shipped_teacher_loads_and_says_what_it_was_distilled_on():
    teacher = load_teacher()
    assert teacher.info.size == "small" and teacher.info.backbone == "tf_efficientnet_lite0"
    assert "dead leaves" in teacher.info.data


def test_penalty_from_a_folder_of_images(tiny_teacher, tmp_path):
    from PIL import Image

    for index in range(2):
        Image.fromarray((dead_leaves(np.random.default_rng(index), 64) * 255).astype(np.uint8)).save(
            tmp_path / f"{index}.png"
        )
    train = make_texture_set(4, 0, size=(64, 64), seed=0)
    model = fs.create("efficientad", penalty_images=str(tmp_path), teacher=str(tiny_teacher), **{**SMALL, "steps": 3})
    assert np.isfinite(model.fit(train, progress=False).loss_history_).all()


@pytest.mark.slow
def test_int8_scores_follow_float32_find_defects_and_survive_save_load(
    float_model, texture_train, texture_test, tiny_teacher, tmp_path
):
    int8_model = fs.create("efficientad", teacher=str(tiny_teacher), precision="int8", **SMALL).fit(
        texture_train, progress=False
    )
    assert int8_model.loss_history_ == float_model.loss_history_  # trained in float32 alike, then quantized
    scores = int8_model.predict(texture_test, progress=False).scores
    float_scores = float_model.predict(texture_test, progress=False).scores
    assert auroc(texture_test.labels, scores) >= 0.9
    assert np.corrcoef(scores, float_scores)[0, 1] > 0.8  # 0.88 here: int8 noise on small differences
    assert not np.allclose(scores, float_scores)  # the int8 networks really score
    loaded = fs.load(int8_model.save(tmp_path / "model"))
    assert np.array_equal(loaded.predict(texture_test, progress=False).scores, scores)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    del config["meta"]["int8_scheme"]  # as int8 models were saved before the scheme: their networks would differ
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="made with the scheme '8-bit weights, float bias'"):
        fs.load(tmp_path / "model")
    calibrated = copy.copy(float_model).calibrate(texture_train, progress=False)
    quantized = calibrated.quantize(texture_train, progress=False)  # the float32 fit made int8 without training
    assert quantized.precision == "int8" and not quantized.is_calibrated  # the old threshold would not fit
    assert calibrated.precision == "float32" and calibrated.is_calibrated  # the float32 model is left as it was
    assert np.array_equal(quantized.predict(texture_test, progress=False).scores, scores)
    assert np.array_equal(calibrated.predict(texture_test, progress=False).scores, float_scores)
    with pytest.raises(ConfigError, match="has precision='int8'"):
        quantized.quantize(texture_train, progress=False)
    quantized.calibrate(texture_train, progress=False)
    parity = check_parity(quantized, quantized.export(tmp_path / "exported"), texture_test)
    assert parity["passed"] and parity["score_rtol"] == INT8_PARITY[0], parity  # int8 kernels in onnxruntime


def _output_step(int8: torch.nn.Module) -> float:
    """The step of an int8 network's output grid: its last quantized module's scale."""
    return [module.scale for module in int8.modules() if hasattr(module, "scale")][-1]


def test_the_qdq_form_computes_what_the_int8_network_does():
    torch.manual_seed(0)
    network, images = patch_description_network("small", 32).eval(), torch.rand(4, 3, 64, 64) * 2 - 1
    int8 = convert_int8(calibrate_int8(network, images, 2))
    with torch.no_grad():
        expected, got = int8(images), qdq_network(int8)(images)
    step = _output_step(int8)
    differing = (got - expected).abs() > step / 2
    assert float((got - expected).abs().max()) <= 1.01 * step  # one grid step at most
    # 1e-5 of a layer's outputs, where a float convolution lands on a step's edge; 0.5 % after 6 layers (25 % if the
    # pooling averaged dequantized values in float)
    assert float(differing.float().mean()) < 0.03
    with pytest.raises(ConfigError, match="qdq_network takes an int8 network"):
        qdq_network(network)


def test_onnxruntime_computes_the_very_integers_of_the_torch_int8_network(tmp_path):
    """7-bit weights (no 16-bit sums to saturate on a CPU without VNNI) and biases on their accumulators' grids (as
    onnxruntime's QLinearConv holds them): both engines' int8 kernels then give the same outputs on any x86 CPU."""
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    network = patch_description_network("small", 32).eval()
    calibration, images = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(4, 3, 64, 64) * 4 - 2  # beyond its range
    int8 = convert_int8(calibrate_int8(network, calibration, 2))
    for convolution, input_step in _convolution_input_scales(int8):
        weight = convolution.weight()
        assert int(weight.int_repr().abs().max()) <= 63
        accumulator_steps = convolution.bias() / (input_step * weight.q_per_channel_scales().float())
        assert torch.allclose(accumulator_steps, accumulator_steps.round(), atol=1e-3)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(qdq_network(int8), (images,), str(tmp_path / "pdn.onnx"), dynamo=True, opset_version=OPSET)
    session = onnxruntime.InferenceSession(str(tmp_path / "pdn.onnx"), providers=["CPUExecutionProvider"])
    exported = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])
    with torch.no_grad():
        expected = int8(images)
    step = _output_step(int8)
    # where a float multiplier lands on a step's edge (none here; 5 % before, 4 % off by up to 5 steps on AVX2)
    assert float(((exported - expected).abs() > step / 2).float().mean()) < 1e-4


def test_int8_is_refused_where_the_device_is_a_gpu(texture_train, tiny_teacher, monkeypatch):
    from flawscope.models.efficientad import detector

    monkeypatch.setattr(detector, "resolve_device", lambda device: torch.device("cuda"))
    with pytest.raises(ConfigError, match="int8' runs on the CPU only"):
        fs.create("efficientad", teacher=str(tiny_teacher), precision="int8", **SMALL).fit(
            texture_train, progress=False
        )


def test_quantize_refuses_a_model_on_a_gpu(texture_train, tiny_teacher):
    model = fs.create("efficientad", teacher=str(tiny_teacher), **{**SMALL, "steps": 2}).fit(
        texture_train, progress=False
    )
    model.device_ = torch.device("cuda")  # as if loaded on a GPU: only the check runs, nothing touches the device
    with pytest.raises(ConfigError, match=r"runs on the CPU only.*device='cpu'"):
        model.quantize(texture_train, progress=False)
