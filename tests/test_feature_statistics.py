"""PaDiM, CNN Feature Dictionary, GMM Texture Inspection and DFR: known answers and synthetic defects."""

import numpy as np
import pytest
import torch

import flawscope as fs
from flawscope.errors import ConfigError
from flawscope.features.clustering import PCA, GaussianMixture, kmeans
from flawscope.metrics import auroc, pixel_metrics
from flawscope.models.dfr import feature_autoencoder
from flawscope.models.feature_dictionary import mean_of_covering_patches
from flawscope.models.padim import GaussianAccumulator, mahalanobis, precision_of

# Settings small enough for the 2-core CI machine, and the quality each must reach on the
# synthetic textures (12 good, 12 defective, 96 x 96 px).
DETECTION = {
    "padim": ({"image_size": 96, "n_features": 60}, 0.95, 0.90),
    "feature_dictionary": ({"layers": (3,), "patch_size": 32, "n_patches": 3000, "n_centres": 10}, 0.90, 0.80),
    "gmm_texture": ({"image_size": 96, "levels": 3, "n_components": 4, "samples_per_level": 20000}, 0.90, 0.85),
    "dfr": ({"image_size": 96, "epochs": 5, "vectors_per_step": 1024}, 0.90, 0.85),
}


@pytest.mark.parametrize("name", sorted(DETECTION))
def test_detects_synthetic_defects(name, texture_train, texture_test):
    params, image_minimum, pixel_minimum = DETECTION[name]
    model = fs.create(name, device="cpu", **params).fit(texture_train, progress=False)
    prediction = model.predict(texture_test, progress=False)
    image_auroc = auroc(texture_test.labels, prediction.scores)
    masks = [sample.read_mask(m.shape) for sample, m in zip(texture_test, prediction.anomaly_maps)]
    pixel_auroc = pixel_metrics(prediction.anomaly_maps, masks)["pixel_auroc"]
    assert image_auroc >= image_minimum and pixel_auroc >= pixel_minimum, (image_auroc, pixel_auroc)


def test_gaussian_accumulator_matches_inverse_of_torch_cov_over_several_batches():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(23, 5, 4, generator=generator) * 3 + 10  # images x positions x features
    accumulator = GaussianAccumulator()
    for part in embeddings.split([7, 1, 15]):
        accumulator.update(part)
    torch.testing.assert_close(accumulator.mean, embeddings.mean(0))
    covariance = accumulator.covariance()
    precision = precision_of(covariance, 0.01)
    for position in range(5):
        expected = torch.cov(embeddings[:, position].T)
        torch.testing.assert_close(covariance[position], expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            precision[position], torch.linalg.inv(expected + 0.01 * torch.eye(4)), rtol=1e-4, atol=1e-5
        )
    first = GaussianAccumulator()
    first.update(embeddings[:9])
    resumed = GaussianAccumulator.resume(first.count, first.mean, first.covariance())  # what a saved PaDiM holds
    resumed.update(embeddings[9:])
    torch.testing.assert_close(resumed.mean, embeddings.mean(0))
    torch.testing.assert_close(resumed.covariance(), covariance, rtol=1e-4, atol=1e-4)


def test_mahalanobis_known_answer():
    mean = torch.tensor([[1.0, 2.0]])
    precision = torch.linalg.inv(torch.tensor([[[4.0, 0.0], [0.0, 1.0]]]))
    point = torch.tensor([[[3.0, 5.0]]])  # (2/2)^2 + (3/1)^2 = 10
    assert mahalanobis(point, mean, precision).item() == pytest.approx(10**0.5)


def test_padim_refuses_more_features_than_channels(texture_train):
    with pytest.raises(ConfigError, match="n_features=500 but layers"):
        fs.create("padim", n_features=500, device="cpu").fit(texture_train, progress=False)


def test_kmeans_finds_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=generator) for c in truth])
    centres = kmeans(points, 3, torch.Generator().manual_seed(1))
    matched = torch.cdist(truth, centres).min(dim=1).values
    assert (matched < 0.1).all()


def test_pca_keeps_the_stated_variance():
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([10.0, 3.0, 1.0, 0.1])  # variances 100, 9, 1, 0.01: 2 axes hold 98.1 %
    points = torch.randn(5000, 4, generator=generator) * scales
    assert PCA.fit(points, 0.95).components.shape == (4, 2)
    assert PCA.fit(points, 0.995).components.shape == (4, 3)


def test_gaussian_mixture_log_likelihood_matches_scikit_learn():
    mixture_module = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 1, (400, 3)), rng.normal(5, 0.5, (300, 3))])
    ours = GaussianMixture.fit(torch.from_numpy(points), 2, torch.Generator().manual_seed(0))
    theirs = mixture_module.GaussianMixture(2, covariance_type="full", reg_covar=1e-6, random_state=0).fit(points)
    expected = -theirs.score_samples(points)
    np.testing.assert_allclose(ours.negative_log_likelihood(torch.from_numpy(points)).numpy(), expected, rtol=1e-3)


def test_mean_of_covering_patches_known_answer():
    scores = torch.tensor([[1.0, 3.0]])  # two 4 px patches at x = 0 and x = 2 (stride 2, 2 cells)
    result = mean_of_covering_patches(scores, cells=2, stride=2, size=(4, 7))
    expected_row = torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0])  # last column: replicated
    torch.testing.assert_close(result, expected_row.expand(4, 7))


def test_feature_dictionary_scores_small_images_and_checks_geometry(texture_train):
    with pytest.raises(ConfigError, match="patch_size must be a multiple of 32"):
        fs.create("feature_dictionary", patch_size=100, device="cpu").fit(texture_train, progress=False)
    model = fs.create("feature_dictionary", layers=(3,), patch_size=32, n_patches=500, n_centres=4, device="cpu")
    model.fit(texture_train, progress=False)
    tiny = np.zeros((20, 40), np.uint8)  # smaller than one patch: enlarged, map back at 20 x 40
    assert model.predict([tiny], progress=False).anomaly_maps[0].shape == (20, 40)


def test_gmm_texture_refuses_a_pyramid_smaller_than_its_patches(texture_train):
    with pytest.raises(ConfigError, match="halved 3 times is 12 px"):
        fs.create("gmm_texture", image_size=96, levels=4, patch_size=13, device="cpu").fit(
            texture_train, progress=False
        )


def test_gmm_texture_levels_are_normalised_on_held_out_images(texture_train):
    model = fs.create("gmm_texture", image_size=64, levels=2, n_components=2, samples_per_level=3000, device="cpu")
    model.fit(texture_train, progress=False)
    assert model.level_std_.shape == (2,) and (model.level_std_ > 0).all()


def test_dfr_autoencoder_shape_and_falling_loss(texture_train):
    network = feature_autoencoder(192, 20)
    widths = [m.out_channels for m in network if isinstance(m, torch.nn.Conv2d)]
    assert widths == [116, 40, 20, 40, 116, 192]
    model = fs.create("dfr", image_size=64, epochs=8, vectors_per_step=512, device="cpu").fit(
        texture_train, progress=False
    )
    assert model.loss_history_[-1] < 0.5 * model.loss_history_[0]
    assert 1 <= model.latent_ <= 192
