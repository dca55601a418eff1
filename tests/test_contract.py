"""Checks every registered detector must pass (scikit-learn's check_estimator, in our terms)."""

import numpy as np
import pytest

import flawscope as fs
from flawscope.errors import ConfigError, DataError, ModelFileError, NotFittedError

SMALL = {
    "patchcore": {"image_size": 64, "coreset_ratio": 0.25, "device": "cpu"},
    "padim": {"image_size": 64, "n_features": 40, "device": "cpu"},
    "feature_dictionary": {"layers": (3,), "patch_size": 32, "n_patches": 600, "n_centres": 5, "device": "cpu"},
    "dfr": {"image_size": 64, "epochs": 3, "vectors_per_step": 512, "device": "cpu"},
    "ae_l2": {
        "image_size": 64,
        "patch_size": 32,
        "latent_dim": 16,
        "n_patches": 256,
        "epochs": 2,
        "stride": 16,
        "device": "cpu",
    },
    "ae_ssim": {
        "image_size": 64,
        "patch_size": 32,
        "latent_dim": 16,
        "n_patches": 256,
        "epochs": 2,
        "stride": 16,
        "device": "cpu",
    },
    "ae_mse": {"image_size": 64, "patch_size": 64, "latent_dim": 16, "n_patches": 64, "epochs": 2, "device": "cpu"},
    "vae": {
        "image_size": 64,
        "patch_size": 32,
        "latent_dim": 16,
        "n_patches": 256,
        "epochs": 2,
        "stride": 16,
        "device": "cpu",
    },
    "feature_matching_ae": {
        "image_size": 64,
        "patch_size": 32,
        "latent_dim": 16,
        "n_patches": 256,
        "epochs": 2,
        "stride": 16,
        "device": "cpu",
    },
    "efficientad": {"image_size": 128, "steps": 10, "device": "cpu"},
    "simplenet": {"image_size": 64, "epochs": 3, "noise_std": 0.5, "device": "cpu"},
    "cam_classifier": {"image_size": 64, "max_epochs": 2, "learning_rate": 1e-3, "device": "cpu"},
    "gmm_texture": {
        "image_size": 64,
        "levels": 2,
        "patch_size": 5,
        "n_components": 2,
        "samples_per_level": 2000,
        "device": "cpu",
    },
}


@pytest.fixture(params=fs.list_models())
def name(request):
    return request.param


@pytest.fixture
def train(name, texture_train, labelled_train):
    """What ``name`` learns from: good images, or labelled good and defective ones for a supervised method."""
    return labelled_train if model_is_supervised(name) else texture_train


def test_every_registered_model_has_small_settings(name):
    assert name in SMALL, f"add small test settings for {name!r} to SMALL"


def test_fit_returns_self_and_seed_gives_same_scores(name, train, texture_test):
    first = fs.create(name, seed=3, **SMALL[name])
    assert first.fit(train, progress=False) is first
    second = fs.create(name, seed=3, **SMALL[name]).fit(train, progress=False)
    np.testing.assert_array_equal(
        first.predict(texture_test, progress=False).scores, second.predict(texture_test, progress=False).scores
    )


def test_not_fitted_error_before_fit(name):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        fs.create(name).predict([np.zeros((32, 32), np.uint8)])
    assert issubclass(NotFittedError, AttributeError)


def test_save_load_round_trip_gives_identical_results(name, train, texture_train, texture_test, tmp_path):
    model = fs.create(name, **SMALL[name]).fit(
        train if train is not texture_train else texture_train[:9], progress=False
    )
    model.calibrate(texture_train[9:], progress=False)
    before = model.predict(texture_test, progress=False)
    loaded = fs.load(model.save(tmp_path / "model"))
    after = loaded.predict(texture_test, progress=False)
    np.testing.assert_array_equal(before.scores, after.scores)
    assert loaded.threshold_ == model.threshold_ and loaded.calibration_ == model.calibration_
    assert all(np.array_equal(a, b) for a, b in zip(before.masks, after.masks))


def test_higher_means_more_anomalous(name, train, texture_test):
    model = fs.create(name, **SMALL[name]).fit(train, progress=False)
    scores = model.predict(texture_test, progress=False).scores
    labels = texture_test.labels
    assert scores[labels == 1].mean() > scores[labels == 0].mean()


def test_bad_parameters_give_sklearn_style_errors(name, texture_train):
    model = fs.create(name, batch_size=0)
    with pytest.raises(
        ConfigError, match=r"The 'batch_size' parameter of \w+ must be an int in \[1, inf\]. Got 0 instead."
    ):
        model.fit(texture_train, progress=False)
    with pytest.raises(ConfigError, match="has no parameter"):
        fs.create(name, no_such_parameter=1)


def test_fit_refuses_empty_or_defective_data(name, texture_train, texture_test):
    with pytest.raises(DataError, match="at least 1 good image"):
        fs.create(name, **SMALL[name]).fit([], progress=False)
    if model_is_supervised(name):  # it needs both kinds, and labels
        with pytest.raises(DataError, match="needs good and defective images"):
            fs.create(name, **SMALL[name]).fit(texture_train, progress=False)
        with pytest.raises(DataError, match="unlabelled"):
            fs.create(name, **SMALL[name]).fit([np.zeros((32, 32), np.uint8)] * 2, progress=False)
    else:
        with pytest.raises(DataError, match="defective"):
            fs.create(name, **SMALL[name]).fit(texture_test, progress=False)


def model_is_supervised(name):
    return type(fs.create(name)).supervised


def test_unknown_model_lists_the_registry():
    with pytest.raises(ConfigError, match="Did you mean 'patchcore'.*Registered models: .*patchcore"):
        fs.create("patchcor")


def test_damaged_or_foreign_model_directories(fitted_patchcore, tmp_path):
    path = fitted_patchcore.save(tmp_path / "model")
    config = (path / "config.json").read_text()
    (path / "config.json").write_text(config.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(ModelFileError, match="format version 99"):
        fs.load(path)
    (path / "config.json").write_text(config)
    (path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ModelFileError, match="damaged"):
        fs.load(path)
    with pytest.raises(ModelFileError, match="config.json is missing"):
        fs.load(tmp_path / "nowhere")
