"""What a calibrated threshold promises in false alarms, and the warning when the images cannot show it."""

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

import flawscope as fs
from flawscope.postprocess import describe_false_alarms, false_alarm_statement, unsupported_rule


def test_false_alarm_statement_known_answers():
    good = np.arange(100, dtype=float)  # 0..99
    statement = false_alarm_statement(good, threshold=94.5, rule="fpr", k=3.0, target_fpr=0.05)
    assert statement["aimed_fpr"] == 0.05 and statement["false_alarms"] == 5 and statement["n_good"] == 100
    low, high = statement["fpr_interval"]
    exact = binomtest(5, 100).proportion_ci(confidence_level=0.95, method="exact")
    assert (low, high) == pytest.approx((exact.low, exact.high), abs=1e-9)
    sigma = false_alarm_statement(good, threshold=1e9, rule="sigma", k=3.0, target_fpr=0.01)
    assert sigma["aimed_fpr"] == pytest.approx(0.0013499, abs=1e-6)  # the normal tail above 3 sigma
    assert sigma["fpr_interval"][0] == 0.0 and sigma["fpr_interval"][1] == pytest.approx(0.0362, abs=1e-4)
    assert false_alarm_statement(good, 50.0, "f1", 3.0, 0.01)["aimed_fpr"] is None
    assert "5 of 100 good calibration images above it" in describe_false_alarms(statement)


def test_a_rule_the_images_cannot_support_is_named():
    few = false_alarm_statement(np.arange(50.0), threshold=49.5, rule="fpr", k=3.0, target_fpr=0.01)
    assert "50 good calibration images cannot show a false-alarm rate of 1.00% (that takes at least 100)" in (
        unsupported_rule(few) or ""
    )
    enough = false_alarm_statement(np.arange(200.0), threshold=197.5, rule="fpr", k=3.0, target_fpr=0.01)
    assert unsupported_rule(enough) is None


def test_calibrate_saves_the_statement_and_warns(fitted_patchcore, texture_train):
    model = fitted_patchcore.clone()
    model.__dict__.update(fitted_patchcore._learned_state())  # the fitted state, not the shared object
    with pytest.warns(fs.CalibrationWarning, match="cannot show a false-alarm rate"):
        model.calibrate(texture_train, rule="fpr", target_fpr=0.01, progress=False)
    calibration = model.calibration_
    assert calibration["n_good"] == 12 and calibration["aimed_fpr"] == 0.01
    assert calibration["false_alarms"] <= 1 and 0.0 <= calibration["fpr_interval"][0] <= calibration["fpr_interval"][1]


@pytest.mark.parametrize("name", ["patchcore", "padim"])
def test_fit_out_of_fold_scores_no_image_as_its_own_neighbour(name, texture_train, texture_test):
    params = {**fs.model_entry(name).test_params, "device": "cpu"}
    model = fs.create(name, **params).fit_out_of_fold(
        texture_train, n_folds=3, rule="fpr", target_fpr=0.2, progress=False
    )
    plain = fs.create(name, **params).fit(texture_train, progress=False)
    np.testing.assert_array_equal(  # fitted on every image, as a plain fit
        model.predict(texture_test, progress=False).scores, plain.predict(texture_test, progress=False).scores
    )
    own_scores = plain.predict(texture_train, progress=False).scores
    assert model.calibration_["scores_from"].startswith("out of fold") and model.calibration_["n_good"] == 12
    assert model.threshold_ > np.quantile(own_scores, 0.8)  # images seen in training score lower than unseen


def test_patchcore_with_its_full_bank_leaves_the_group_out_exactly(texture_train):
    from flawscope.data.splits import with_groups

    grouped = with_groups(texture_train, [f"part{i // 3}" for i in range(12)])  # 4 parts of 3 images
    params = {"image_size": 64, "coreset_ratio": 1.0, "device": "cpu"}
    model = fs.create("patchcore", **params).fit(grouped, progress=False)
    scores, _ = model._out_of_fold_scores(grouped, [s.group for s in grouped], 5, False)
    for part in range(4):  # the same as a model fitted without the part, then scoring it
        inside = [i for i in range(12) if i // 3 == part]
        others = grouped.subset([i for i in range(12) if i // 3 != part], "other parts")
        refit = fs.create("patchcore", **params).fit(others, progress=False)
        expected = refit.predict(grouped.subset(inside, "part"), progress=False).scores
        np.testing.assert_allclose(scores[inside], expected, rtol=1e-4)


def test_the_default_rule_and_the_mse_autoencoders_recipe():
    assert fs.create("patchcore").default_threshold == fs.create("padim").default_threshold
    default = fs.create("patchcore").default_threshold
    assert (default.rule, default.target_fpr) == ("fpr", 0.05)
    recipe = fs.create("ae_mse").default_threshold  # the slides: mean + 3 std of the good scores
    assert (recipe.rule, recipe.k) == ("sigma", 3.0)
    assert default.with_changes("sigma", None, None) == type(default)("sigma", 3.0, 0.05)


def test_the_nearest_patch_of_another_group_when_the_own_group_fills_every_neighbour():
    from flawscope.features.neighbours import TorchSearch

    generator = torch.Generator().manual_seed(0)
    own_copies = torch.zeros(40, 4) + 0.001 * torch.randn(40, 4, generator=generator)  # 40 near-copies: group 0
    others = torch.randn(300, 4, generator=generator) + 3.0  # groups 1 and 2, far away
    bank = torch.cat([own_copies, others])
    model = fs.create("patchcore")
    model.memory_bank_, model.search_index_ = bank, TorchSearch().fit(bank)
    bank_groups = torch.cat([torch.zeros(40), torch.arange(300) % 2 + 1]).long()
    queries = torch.cat([torch.zeros(3, 4), others[:2] + 0.01])
    own = torch.tensor([0, 0, 0, 1, 2])
    distance, index = model._nearest_outside_group(queries, own, bank_groups)
    for row in range(5):
        allowed = torch.nonzero(bank_groups != own[row]).flatten()
        gaps = (bank[allowed] - queries[row]).norm(dim=1)
        assert int(index[row]) == int(allowed[gaps.argmin()])
        assert float(distance[row]) == pytest.approx(float(gaps.min()), rel=1e-5)
    with pytest.raises(fs.DataError, match="at least 2 groups"):
        model._nearest_outside_group(queries[:1], own[:1], torch.zeros(340).long())
