"""Teaching a fitted model: ``update`` with new good images, ``recalibrate`` from operator verdicts, and their CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import flawscope as fs
from flawscope.cli import app
from flawscope.data.datasets import ImageDataset, InMemoryDataset
from flawscope.data.synthetic import make_texture_set
from flawscope.features.coreset import coreset_with_radius, greedy_extension
from flawscope.metrics import auroc
from flawscope.models.padim import precision_of

SMALL = {"padim": {"image_size": 64, "n_features": 40}, "patchcore": {"image_size": 64, "coreset_ratio": 0.25}}


@pytest.fixture(scope="module")
def first_lot():
    return make_texture_set(10, 0, size=(96, 96), seed=0)


@pytest.fixture(scope="module")
def second_lot():
    return make_texture_set(10, 0, size=(96, 96), seed=5)


def both(*datasets: ImageDataset) -> ImageDataset:
    return ImageDataset([sample for dataset in datasets for sample in dataset.samples], "together")


def scores(model, images) -> np.ndarray:
    return model.predict(images, progress=False).scores


def relit(dataset: ImageDataset, gain: float = 0.5, offset: float = 0.3) -> InMemoryDataset:
    """The same parts under other lighting: lower contrast, brighter."""
    images = [np.clip(np.asarray(s.image, dtype=np.float32) / 255 * gain + offset, 0, 1) for s in dataset.samples]
    return InMemoryDataset([(image * 255).astype(np.uint8) for image in images], labels=dataset.labels)


# ---------------------------------------------------------------- coreset


def test_coreset_radius_is_the_largest_distance_to_the_selection():
    points = torch.randn(1500, 8, generator=torch.Generator().manual_seed(0))
    selected, radius = coreset_with_radius(points, 0.05, torch.Generator().manual_seed(1))
    assert radius == pytest.approx(float(torch.cdist(points, points[selected]).min(1).values.max()), rel=1e-5)
    assert coreset_with_radius(points, 1.0, torch.Generator())[1] == 0.0


def test_extension_picks_the_farthest_first_and_stops_at_the_radius():
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(300, 6, generator=generator)
    near = bank[:50] + 0.01 * torch.randn(50, 6, generator=generator)  # covered by the bank already
    far = torch.randn(20, 6, generator=generator) + 12.0  # a cluster the bank never saw
    points = torch.cat([near, far])
    distance = torch.cdist(points, bank).min(1).values
    added = greedy_extension(points, distance, most=70, radius=1.0)
    assert int(added[0]) == int(torch.argmax(distance)) and added.min() >= 50  # only the new cluster
    after = torch.cdist(points, torch.cat([bank, points[added]])).min(1).values
    assert after.max() <= 1.0 + 1e-5  # every new point is now within the radius
    assert len(greedy_extension(points, distance, most=3, radius=0.0)) == 3  # ``most`` caps the growth
    assert len(greedy_extension(near, torch.cdist(near, bank).min(1).values, most=10, radius=1.0)) == 0


# ---------------------------------------------------------------- update


def test_padim_update_equals_a_fit_on_all_images(first_lot, second_lot, texture_test):
    params = {**SMALL["padim"], "device": "cpu"}
    fitted = fs.create("padim", **params).fit(first_lot, progress=False)
    before = scores(fitted, texture_test)
    updated = fitted.update(second_lot, progress=False)
    refit = fs.create("padim", **params).fit(both(first_lot, second_lot), progress=False)
    assert updated.count_ == 20
    assert torch.allclose(updated.mean_, refit.mean_, atol=1e-5)
    assert torch.allclose(updated.covariance_, refit.covariance_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores(updated, texture_test), scores(refit, texture_test), rtol=1e-4)
    np.testing.assert_array_equal(scores(fitted, texture_test), before)  # the old version is unchanged


def test_patchcore_with_its_full_bank_updates_to_a_fit_on_all_images(first_lot, second_lot, texture_test):
    params = {"image_size": 64, "coreset_ratio": 1.0, "device": "cpu"}
    updated = fs.create("patchcore", **params).fit(first_lot, progress=False).update(second_lot, progress=False)
    refit = fs.create("patchcore", **params).fit(both(first_lot, second_lot), progress=False)
    assert updated.memory_bank_.shape == refit.memory_bank_.shape
    np.testing.assert_allclose(scores(updated, texture_test), scores(refit, texture_test), rtol=1e-5)


def test_patchcore_update_adds_only_what_the_bank_does_not_cover(first_lot, tmp_path):
    params = {**SMALL["patchcore"], "device": "cpu"}
    fitted = fs.create("patchcore", **params).fit(first_lot, progress=False)
    fitted.save(tmp_path / "v1")
    new_lighting = relit(make_texture_set(8, 0, size=(96, 96), seed=7))
    before = scores(fitted, new_lighting)
    updated = fitted.update(new_lighting, progress=False)
    change = updated.lineage_[-1]
    new_patches = 8 * 8 * 8  # 64 px input, stride 8
    assert 0 < change["bank_rows_added"] < new_patches
    assert updated.memory_bank_.shape[0] == fitted.memory_bank_.shape[0] + change["bank_rows_added"]
    assert scores(updated, new_lighting).max() < before.min()  # the new lighting now looks normal
    # covered like the training images: within the fit's radius (in its projection; scores are full distances)
    assert scores(updated, new_lighting).max() <= 1.5 * fitted.coverage_radius_
    assert change["parent"] == fitted.version_ and change["images"] == 8 and change["seconds"] > 0
    # taught again the same images: the bank covers them within the fit's radius already, so nothing is added
    again = updated.update(new_lighting, progress=False)
    assert again.lineage_[-1]["bank_rows_added"] == 0
    updated.save(tmp_path / "v2")
    loaded = fs.load(tmp_path / "v2")
    np.testing.assert_allclose(scores(loaded, new_lighting), scores(updated, new_lighting), rtol=1e-6)
    assert [event["event"] for event in loaded.lineage_] == ["fit", "update"]
    assert loaded.lineage_[-1]["parent"] == fs.load(tmp_path / "v1").version_ != loaded.version_


def test_teaching_a_new_lighting_stops_its_false_alarms_and_keeps_detection(first_lot):
    """The experiment of docs/results.md in small: calibrated on the old lighting, the new one raises false alarms;
    taught 8 of its good parts, the false alarms on other parts in that lighting fall and defects are still found."""
    model = fs.create("patchcore", **SMALL["patchcore"], device="cpu").fit(first_lot, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.CalibrationWarning)
        model.calibrate(make_texture_set(10, 0, size=(96, 96), seed=3), rule="sigma", progress=False)
    taught = relit(make_texture_set(8, 0, size=(96, 96), seed=11))
    held_out = relit(make_texture_set(10, 10, size=(96, 96), seed=12))
    good = held_out.labels == 0

    def false_alarms_recall_auroc(detector):
        prediction = detector.predict(held_out, progress=False)
        labels = prediction.labels
        return labels[good].mean(), labels[~good].mean(), auroc(held_out.labels, prediction.scores)

    alarms_before, _, _ = false_alarms_recall_auroc(model)
    alarms_after, recall_after, auroc_after = false_alarms_recall_auroc(model.update(taught, progress=False))
    assert alarms_before >= 0.8 and alarms_after <= alarms_before / 2
    assert recall_after >= 0.9 and auroc_after >= 0.9


def test_methods_that_cannot_update_say_which_can(first_lot):
    with pytest.raises(fs.ConfigError, match="Methods that can: padim, patchcore"):
        fs.create("dfr").update(first_lot)
    with pytest.raises(fs.NotFittedError):
        fs.create("patchcore").update(first_lot)
    assert fs.list_models(capability="updatable") == ["padim", "patchcore"]


def test_update_refuses_defective_or_no_images(fitted_patchcore, texture_test):
    with pytest.raises(fs.DataError, match="contains defective images"):
        fitted_patchcore.update(texture_test, progress=False)
    with pytest.raises(fs.DataError, match="got no images"):
        fitted_patchcore.update([], progress=False)


def test_a_padim_saved_without_covariances_scores_but_refuses_to_update(first_lot, tmp_path):
    model = fs.create("padim", **SMALL["padim"], device="cpu").fit(first_lot, progress=False)
    model.save(tmp_path / "new")
    tensors = load_file(str(tmp_path / "new" / "model.safetensors"))
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    tensors["precision"] = precision_of(tensors.pop("covariance"), model.regularisation).contiguous()  # as 0.1 saved
    config["tensors"] = {name: list(tensor.shape) for name, tensor in tensors.items()}
    del config["meta"]["count"], config["lineage"], config["tensor_sha256"], config["dtypes"]
    (tmp_path / "old").mkdir()
    save_file(tensors, str(tmp_path / "old" / "model.safetensors"))
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    old = fs.load(tmp_path / "old")
    np.testing.assert_allclose(scores(old, first_lot), scores(model, first_lot), rtol=1e-6)
    with pytest.raises(fs.ConfigError, match="without its covariances"):
        old.update(first_lot, progress=False)


# ---------------------------------------------------------------- recalibrate


def test_recalibrate_uses_the_saved_rule_on_good_and_f1_with_defects(fitted_patchcore, texture_test):
    model = fitted_patchcore.clone()
    model.__dict__.update(fitted_patchcore._learned_state())
    good = [s.image for s in texture_test.samples if s.label == 0]
    defective = [s.image for s in texture_test.samples if s.label == 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.CalibrationWarning)
        model.recalibrate(good, progress=False)
        good_scores = scores(model, good)
        assert model.calibration_["rule"] == "fpr" and model.calibration_["scores_from"] == "operator verdicts"
        assert model.threshold_ == pytest.approx(np.quantile(good_scores, 0.95), rel=1e-6)
        model.recalibrate(good, defective, progress=False)
    assert model.calibration_["rule"] == "f1"
    assert (model.calibration_["n_images"], model.calibration_["n_defective"]) == (24, 12)
    labels = model.predict(texture_test, progress=False).labels
    assert (labels == (texture_test.labels == 1)).mean() >= 0.9
    assert model.lineage_[-1] == {"event": "recalibrate", "good": 12, "defective": 12, "parent": None}
    with pytest.raises(fs.DataError, match="at least 1 image confirmed good"):
        model.recalibrate([], defective, progress=False)


# ---------------------------------------------------------------- command line


def write_pngs(dataset: ImageDataset, folder) -> None:
    folder.mkdir(parents=True)
    for index, sample in enumerate(dataset.samples):
        Image.fromarray(np.asarray(sample.image)).save(folder / f"{index}.png")


def test_update_and_recalibrate_commands(first_lot, tmp_path):
    fs.create("padim", **SMALL["padim"], device="cpu").fit(first_lot, progress=False).save(tmp_path / "v1")
    write_pngs(make_texture_set(6, 0, size=(96, 96), seed=8), tmp_path / "new_good")
    verdicts = make_texture_set(6, 6, size=(96, 96), seed=9)
    write_pngs(ImageDataset([s for s in verdicts.samples if s.label == 0], "good"), tmp_path / "confirmed_good")
    write_pngs(ImageDataset([s for s in verdicts.samples if s.label == 1], "bad"), tmp_path / "confirmed_bad")
    runner = CliRunner()
    result = runner.invoke(app, ["update", str(tmp_path / "v1"), "--good", str(tmp_path / "new_good"),
                                 "--out", str(tmp_path / "v2"), "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "with 6 good images" in result.output and fs.load(tmp_path / "v2").count_ == 16
    result = runner.invoke(app, ["recalibrate", str(tmp_path / "v2"), "--good", str(tmp_path / "confirmed_good"),
                                 "--defective", str(tmp_path / "confirmed_bad"), "--out", str(tmp_path / "v3"),
                                 "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "threshold none ->" in result.output and "f1 on 12 images, 6 of them defective" in result.output
    assert [event["event"] for event in fs.load(tmp_path / "v3").lineage_] == ["fit", "update", "recalibrate"]
    same = runner.invoke(app, ["update", str(tmp_path / "v1"), "--good", str(tmp_path / "new_good"),
                               "--out", str(tmp_path / "v1")])  # fmt: skip
    assert same.exit_code == 2 and "the model it came from is kept" in same.output


# ---------------------------------------------------------------- a few good images


def test_augment_makes_declared_views_that_stay_with_their_image():
    from flawscope.datasets import augment

    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))  # dark left, bright right
    views = augment(InMemoryDataset([ramp, ramp.T]), ["hflip"], copies=6, seed=0)
    assert len(views) == 14 and [s.view for s in views.samples[:7]] == list(range(7))
    assert {s.group for s in views.samples[:7]} == {"image_00000"}
    for sample in views.samples[1:7]:  # every view is the image or its mirror, nothing else
        image = sample.image[..., 0]
        assert np.array_equal(image, ramp) or np.array_equal(image, ramp[:, ::-1])
    assert any(np.array_equal(s.image[..., 0], ramp[:, ::-1]) for s in views.samples[1:7])
    brighter = augment(InMemoryDataset([np.full((8, 8), 0.5, np.float32)]), ["brightness=0.2"], copies=20, seed=1)
    values = [float(s.image.mean()) for s in brighter.samples[1:]]
    assert 0.4 <= min(values) < 0.5 < max(values) <= 0.6
    again = augment(InMemoryDataset([ramp]), ["rotate=10", "contrast=0.3"], copies=3, seed=5)
    same = augment(InMemoryDataset([ramp]), ["rotate=10", "contrast=0.3"], copies=3, seed=5)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again.samples[1:], same.samples[1:]))
    for bad, message in (("shear", "Unknown augmentation"), ("rotate=90", r"\(0, 45\]"), ("hflip=2", "Unknown")):
        with pytest.raises(fs.ConfigError, match=message):
            augment(InMemoryDataset([ramp]), [bad])


def test_out_of_fold_calibration_ignores_the_augmented_views(first_lot):
    from flawscope.datasets import augment

    model = fs.create("patchcore", image_size=64, coreset_ratio=1.0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.CalibrationWarning)
        model.fit_out_of_fold(augment(first_lot[:4], ["hflip", "vflip"], copies=2), progress=False)
    assert model.memory_bank_.shape[0] == 12 * 64  # 4 images x 3 views, every patch
    assert model.calibration_["n_good"] == 4  # each image scored without its own views


def test_fit_command_for_a_few_good_images(tmp_path):
    write_pngs(make_texture_set(4, 0, size=(96, 96), seed=0), tmp_path / "data" / "good")
    result = CliRunner().invoke(
        app,
        ["fit", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "model"), "--device", "cpu",
         "--param", "image_size=64", "--param", "coreset_ratio=1.0", "--augment", "hflip", "--augment", "vflip",
         "--augment-copies", "2", "--calibration", "out-of-fold", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "on 4 images (and 2 augmented views of each)" in result.output and "out-of-fold scores" in result.output
    model = fs.load(tmp_path / "model")
    assert model.memory_bank_.shape[0] == 12 * 64 and model.calibration_["n_good"] == 4
    wrong = CliRunner().invoke(app, ["fit", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "m2"),
                                     "--calibration", "loo"])  # fmt: skip
    assert wrong.exit_code == 2 and "held-out or out-of-fold" in wrong.output


def test_a_calibrated_padim_warns_that_an_update_moves_its_scores(first_lot, second_lot):
    model = fs.create("padim", **SMALL["padim"], device="cpu").fit(first_lot, progress=False)
    model.update(second_lot, progress=False)  # not calibrated: nothing to warn about
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.CalibrationWarning)
        model.calibrate(second_lot, progress=False)
    with pytest.warns(fs.CalibrationWarning, match="recalibrate the updated model"):
        model.update(second_lot, progress=False)


def test_version_is_the_saved_directory_only_while_the_model_is_unchanged(first_lot, texture_test, tmp_path):
    from flawscope.serialization import content_hash

    fs.create("patchcore", **SMALL["patchcore"], device="cpu").fit(first_lot, progress=False).save(tmp_path / "v1")
    loaded = fs.load(tmp_path / "v1")
    assert loaded.version_ == content_hash(tmp_path / "v1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.CalibrationWarning)
        loaded.calibrate(texture_test, progress=False)  # a new threshold: no longer what v1 holds
    assert loaded.version_ is None
    loaded.save(tmp_path / "v2")
    assert loaded.version_ == content_hash(tmp_path / "v2") != content_hash(tmp_path / "v1")
