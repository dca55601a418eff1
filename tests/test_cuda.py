"""The CUDA path gives the CPU path's scores. Runs only where CUDA exists."""

import numpy as np
import pytest
import torch

import flawscope as fs
from flawscope.errors import ConfigError

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_scores_match_cpu(texture_train, texture_test):
    scores = {}
    for device in ("cpu", "cuda"):
        model = fs.create("patchcore", image_size=96, coreset_ratio=0.25, device=device, seed=0)
        scores[device] = model.fit(texture_train, progress=False).predict(texture_test, progress=False).scores
    np.testing.assert_allclose(scores["cuda"], scores["cpu"], rtol=1e-3)


def test_auto_device_picks_cuda(texture_train):
    model = fs.create("patchcore", image_size=64, coreset_ratio=0.25).fit(texture_train, progress=False)
    assert model.device_.type == "cuda" and model.memory_bank_.is_cuda


@pytest.mark.parametrize("name", ["ae_ssim", "vae", "ae_mse"])
def test_autoencoder_trained_on_cpu_scores_alike_on_cuda(name, texture_train, texture_test, tmp_path):
    small = {
        "image_size": 64,
        "patch_size": 64 if name == "ae_mse" else 32,
        "latent_dim": 16,
        "n_patches": 128,
        "epochs": 1,
        "stride": 16,
        "device": "cpu",
    }
    model = fs.create(name, **small).fit(texture_train, progress=False)
    cpu_scores = model.predict(texture_test, progress=False).scores
    on_cuda = fs.load(model.save(tmp_path / name), device="cuda")
    assert next(on_cuda.network_.parameters()).is_cuda
    np.testing.assert_allclose(on_cuda.predict(texture_test, progress=False).scores, cpu_scores, rtol=1e-3)


def test_autoencoder_trains_on_cuda(texture_train):
    model = fs.create(
        "ae_l2", image_size=64, patch_size=32, latent_dim=16, n_patches=256, epochs=2, stride=16, device="cuda"
    )
    model.fit(texture_train, progress=False)
    assert model.loss_history_[-1] < model.loss_history_[0]
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert model.training_precision_ == ("bfloat16" if native else "float32")  # training_precision="auto"


@pytest.mark.parametrize(
    "name, small",
    [
        ("efficientad", {"image_size": 128, "steps": 5}),
        ("simplenet", {"image_size": 64, "epochs": 2, "noise_std": 0.5}),
    ],
)
def test_student_teacher_and_discriminative_models_score_alike_on_cuda(
    name, small, texture_train, texture_test, tmp_path
):
    model = fs.create(name, device="cpu", **small).fit(texture_train, progress=False)
    cpu_scores = model.predict(texture_test, progress=False).scores
    on_cuda = fs.load(model.save(tmp_path / name), device="cuda")
    assert on_cuda.device_.type == "cuda"
    np.testing.assert_allclose(on_cuda.predict(texture_test, progress=False).scores, cpu_scores, rtol=1e-3)


def test_efficientad_trains_on_cuda(texture_train):
    model = fs.create("efficientad", image_size=128, steps=30, learning_rate=1e-3, device="cuda").fit(
        texture_train, progress=False
    )
    assert model.student_[0].weight.is_cuda
    assert np.mean(model.loss_history_[-5:]) < np.mean(model.loss_history_[:5])


def test_efficientad_int8_is_refused_on_cuda(texture_train):
    with pytest.raises(ConfigError, match="CPU only"):
        fs.create("efficientad", image_size=128, steps=1, precision="int8", device="cuda").fit(
            texture_train, progress=False
        )


def test_the_ivf_search_runs_on_cuda_and_the_openvino_engine_is_refused_there(texture_train, texture_test):
    model = fs.create("patchcore", image_size=64, coreset_ratio=0.25, search="ivf", search_probes=2, device="cuda")
    cuda_scores = model.fit(texture_train, progress=False).predict(texture_test, progress=False).scores
    assert model.search_index_.centroids.is_cuda
    cpu = fs.create("patchcore", image_size=64, coreset_ratio=0.25, search="ivf", search_probes=2, device="cpu")
    np.testing.assert_allclose(
        cuda_scores, cpu.fit(texture_train, progress=False).predict(texture_test).scores, rtol=1e-3
    )
    with pytest.raises(ConfigError, match="runs the backbone on the CPU"):
        fs.create("patchcore", image_size=64, engine="openvino", device="cuda").fit(texture_train, progress=False)
