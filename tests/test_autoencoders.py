"""The autoencoder family (Bergmann et al. 2019): network table, SSIM, sliding windows, training, detection."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

import flawscope as fs
from flawscope.data.io import read_image
from flawscope.errors import ConfigError, DataError
from flawscope.metrics import auroc, pixel_metrics
from flawscope.models.autoencoder import AutoencoderNetwork, window_starts
from flawscope.postprocess import structuring_element
from flawscope.ssim import ssim_map

TINY = {
    "image_size": 64,
    "patch_size": 32,
    "latent_dim": 32,
    "n_patches": 640,
    "epochs": 6,
    "stride": 8,
    "learning_rate": 5e-4,
    "device": "cpu",
}


def test_table_one_layer_sizes_and_mirrored_decoder():
    network = AutoencoderNetwork(channels=1, patch_size=128, latent_dim=100)
    sizes, x = [], torch.zeros(2, 1, 128, 128)
    for layer in network.encoder:
        x = layer(x)
        if isinstance(layer, nn.Conv2d):
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [
        (32, 64, 64),
        (32, 32, 32),
        (32, 32, 32),
        (64, 16, 16),
        (64, 16, 16),
        (128, 8, 8),
        (64, 8, 8),
        (32, 8, 8),
        (100, 1, 1),
    ]
    assert network.encoder[-1].kernel_size == (8, 8)
    assert tuple(network.decoder(x).shape) == (2, 1, 128, 128)
    activations = [m for m in network.decoder if isinstance(m, nn.LeakyReLU)]
    assert len(activations) == 8 and all(a.negative_slope == 0.2 for a in activations)
    assert not isinstance(network.decoder[-1], nn.LeakyReLU) and not isinstance(network.encoder[-1], nn.LeakyReLU)


def test_mvtec_variant_adds_one_strided_convolution():
    network = AutoencoderNetwork(channels=3, patch_size=256, latent_dim=128)
    convolutions = [m for m in network.encoder if isinstance(m, nn.Conv2d)]
    assert len(convolutions) == 10 and convolutions[0].stride == (2, 2)
    latent = network.encoder(torch.zeros(1, 3, 256, 256))
    assert tuple(latent.shape) == (1, 128, 1, 1)
    assert tuple(network.decoder(latent).shape) == (1, 3, 256, 256)


def test_ssim_is_computed_in_float32_under_autocast():
    generator = torch.Generator().manual_seed(0)
    images, references = torch.rand(2, 1, 32, 32, generator=generator), torch.rand(2, 1, 32, 32, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = ssim_map(images, references.to(torch.bfloat16))
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, ssim_map(images, references.to(torch.bfloat16).float()))


def test_ssim_known_answers():
    image = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim_map(image, image), torch.ones_like(image))
    a, b, c1 = 0.2, 0.7, 0.01**2
    constant = ssim_map(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b), window=5)
    expected_constant = (2 * a * b + c1) / (a * a + b * b + c1)  # contrast-structure term 1; float32 sums: rtol 1e-3
    torch.testing.assert_close(constant, torch.full_like(constant, expected_constant), rtol=1e-3, atol=0)
    # the centre pixel against a direct evaluation of eq. 8 on the 3 x 3 patches around it
    x, y = image[0, 0, :3, :3].double(), image[1, 0, :3, :3].double()
    mx, my = x.mean(), y.mean()
    vx, vy, cov = ((x - mx) ** 2).mean(), ((y - my) ** 2).mean(), ((x - mx) * (y - my)).mean()
    c2 = 0.03**2
    expected = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    got = ssim_map(image[:1, :, :3, :3], image[1:, :, :3, :3], window=3)[0, 0, 1, 1]
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ConfigError, match="odd"):
        ssim_map(image, image, window=4)


def test_windows_cover_the_image_and_average_back_exactly():
    assert window_starts(256, 128, 30) == [0, 30, 60, 90, 120, 128]
    assert window_starts(128, 128, 30) == [0]
    model = fs.create("ae_l2", **TINY)
    model.network_ = nn.Identity()  # a perfect reconstruction of every window
    batch = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    reconstruction = model.reconstruct(batch)
    assert reconstruction.shape == (1, 2, 1, 64, 64)
    torch.testing.assert_close(reconstruction[0], batch)


def test_disk_opening_of_diameter_four():
    disk = structuring_element(4, "disk")
    assert disk.sum() == 12 and not disk[0, 0] and disk[0, 1] and disk[1, 0]
    with pytest.raises(ConfigError, match="opening shape"):
        structuring_element(3, "star")


def test_default_masks_open_with_the_papers_disk(texture_train):
    model = fs.create("ae_l2", **{**TINY, "epochs": 1, "n_patches": 64}).fit(texture_train[:6], progress=False)
    model.calibrate(texture_train[6:], progress=False)
    anomaly_map = np.zeros((40, 40), np.float32)
    anomaly_map[10:13, 10:13] = model.pixel_threshold_ + 1.0  # 3 x 3: too small for a diameter-4 disk
    anomaly_map[20:30, 20:30] = model.pixel_threshold_ + 1.0
    _, mask, boxes = model.decide(0.0, anomaly_map)
    assert not mask[10:13, 10:13].any() and mask[21:29, 20:30].all() and mask[20:30, 21:29].all()
    assert not mask[20, 20] and not mask[29, 29]  # a disk cannot reach a square's corners
    assert len(boxes) == 1
    _, unopened, _ = model.decide(0.0, anomaly_map, opening=0)
    assert unopened[10:13, 10:13].all()


@pytest.mark.parametrize(
    "name",
    [
        "ae_l2",
        "ae_ssim",
        pytest.param("vae", marks=pytest.mark.slow),
        pytest.param("feature_matching_ae", marks=pytest.mark.slow),
    ],
)
def test_loss_falls_and_synthetic_defects_are_found(name, texture_train, texture_test):
    model = fs.create(name, **TINY).fit(texture_train, progress=False)
    assert model.loss_history_[-1] < model.loss_history_[0]
    prediction = model.predict(texture_test, progress=False)
    masks = [sample.read_mask(m.shape) for sample, m in zip(texture_test.samples, prediction.anomaly_maps)]
    assert pixel_metrics(prediction.anomaly_maps, masks)["pixel_auroc"] >= MIN_PIXEL_AUROC[name]
    assert auroc(texture_test.labels, prediction.scores) >= MIN_IMAGE_AUROC[name]


@pytest.mark.parametrize("name", ["ae_l2", "ae_ssim"])
def test_bfloat16_training_finds_the_defects_and_is_saved(name, texture_train, texture_test, tmp_path):
    model = fs.create(name, training_precision="bfloat16", **TINY).fit(texture_train, progress=False)
    assert model.training_precision_ == "bfloat16" and model.network_.decoder[-1].weight.dtype == torch.float32
    assert model.loss_history_[-1] < model.loss_history_[0]
    prediction = model.predict(texture_test, progress=False)
    assert auroc(texture_test.labels, prediction.scores) >= MIN_IMAGE_AUROC[name]
    masks = [sample.read_mask(m.shape) for sample, m in zip(texture_test.samples, prediction.anomaly_maps)]
    assert pixel_metrics(prediction.anomaly_maps, masks)["pixel_auroc"] >= MIN_PIXEL_AUROC[name]
    assert fs.load(model.save(tmp_path / name)).training_precision_ == "bfloat16"


MIN_PIXEL_AUROC = {"ae_l2": 0.8, "ae_ssim": 0.8, "vae": 0.8, "feature_matching_ae": 0.8}
MIN_IMAGE_AUROC = {"ae_l2": 0.6, "ae_ssim": 0.6, "vae": 0.6, "feature_matching_ae": 0.6}


def test_mse_autoencoder_scores_the_mean_squared_error(texture_train, texture_test):
    model = fs.create("ae_mse", image_size=64, patch_size=64, n_patches=120, epochs=4, learning_rate=1e-3, device="cpu")
    model.fit(texture_train, progress=False)
    images = [read_image(sample.image) for sample in texture_test.samples[:3]]
    batch = model._to_tensor(images)
    with torch.inference_mode():
        reconstruction = model.network_(batch.contiguous(memory_format=torch.channels_last))
        scores, _ = model._score_batch(batch)
    torch.testing.assert_close(scores, (reconstruction - batch).square().mean(dim=(1, 2, 3)))
    assert model.loss_history_[-1] < model.loss_history_[0]
    assert model.training_precision_ == "float32"  # "auto": its bfloat16 training was not measured


def test_feature_matching_with_zero_weight_is_the_l2_autoencoder(texture_train):
    short = {**TINY, "epochs": 2, "n_patches": 128}
    l2 = fs.create("ae_l2", seed=5, **short).fit(texture_train, progress=False)
    matched = fs.create("feature_matching_ae", seed=5, feature_weight=0.0, **short).fit(texture_train, progress=False)
    np.testing.assert_allclose(matched.loss_history_, l2.loss_history_, rtol=1e-5)
    weighted = fs.create("feature_matching_ae", seed=5, **short).fit(texture_train, progress=False)
    assert weighted.loss_history_[0] > l2.loss_history_[0]  # the feature term adds to the pixel loss
    assert len(weighted.backbone_fingerprint_) > 0


def test_vae_scores_do_not_depend_on_the_batch(texture_train, texture_test):
    model = fs.create("vae", n_samples=3, **{**TINY, "epochs": 1}).fit(texture_train, progress=False)
    together = model.predict(texture_test[:5], progress=False, batch_size=5).scores
    alone = model.predict(texture_test[:5], progress=False, batch_size=1).scores
    np.testing.assert_allclose(together, alone, rtol=1e-5)


def test_recipes_and_their_announcement(texture_train, capsys, caplog):
    assert fs.create("ae_ssim").schedule() == (10_000, 5)
    assert fs.create("ae_ssim", recipe="paper").schedule() == (10_000, 200)
    assert fs.create("ae_ssim", recipe="paper", epochs=7).schedule() == (10_000, 7)
    assert fs.create("ae_mse", recipe="paper").schedule() == (10_000, 100)
    assert fs.create("ae_ssim", recipe="long").schedule() == (10_000, 45)
    assert fs.create("ae_l2", recipe="long").schedule() == (10_000, 80)
    with caplog.at_level(logging.INFO, logger="flawscope"):
        fs.create("ae_l2", **{**TINY, "epochs": 1, "n_patches": 64}).fit(texture_train[:4], progress=False)
    assert "64 patches x 1 epochs" in caplog.text and "recipe='paper'" in caplog.text
    assert capsys.readouterr().err == ""  # the library logs; it never prints


def test_early_stopping_keeps_a_validation_history(texture_train):
    model = fs.create("ae_l2", early_stopping=True, patience=1, **{**TINY, "epochs": 4}).fit(
        texture_train, progress=False
    )
    assert 1 <= len(model.validation_history_) == len(model.loss_history_) <= 4
    assert all(np.isfinite(model.validation_history_))
    with pytest.raises(DataError, match="leaves none to train on"):
        fs.create("ae_l2", early_stopping=True, **TINY).fit(texture_train[:1], progress=False)


def test_bad_autoencoder_settings():
    with pytest.raises(ConfigError, match="patch_size=128 exceeds image_size=64"):
        fs.create("ae_l2", image_size=64, device="cpu").fit([np.zeros((64, 64), np.float32)], progress=False)
    with pytest.raises(ConfigError, match=r"'patch_size' parameter of L2Autoencoder must be a power of two"):
        fs.create("ae_l2", patch_size=100).fit([np.zeros((64, 64), np.float32)], progress=False)
    with pytest.raises(ConfigError, match="ssim_window must be odd"):
        fs.create("ae_ssim", ssim_window=10, **TINY).fit([np.zeros((64, 64), np.float32)], progress=False)
    with pytest.raises(ConfigError, match=r"'recipe' parameter .* must be a str among \{'fast', 'long', 'paper'\}"):
        fs.create("ae_l2", recipe="slow").fit([np.zeros((64, 64), np.float32)], progress=False)
