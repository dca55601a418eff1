"""The supervised CAM classifier: splits, fine-tuned layers, CAM boxes, and what evaluate reports for it."""

import pytest
import torch

import flawscope as fs
from flawscope.data.elpv import ELPV
from flawscope.data.splits import stratified_split
from flawscope.data.synthetic import make_texture_set
from flawscope.errors import DataError
from flawscope.features.backbones import create_classifier
from flawscope.metrics import auroc
from flawscope.models.cam_classifier import trainable_convolutions

SMALL = {"image_size": 96, "max_epochs": 5, "learning_rate": 1e-3, "device": "cpu"}


def test_stratified_split_keeps_the_class_proportions_and_is_seeded():
    data = make_texture_set(30, 10, size=(32, 32), seed=0)
    parts = stratified_split(data, (0.6, 0.2, 0.2), seed=1)
    assert [len(p) for p in parts] == [24, 8, 8]
    assert [int(p.labels.sum()) for p in parts] == [6, 2, 2]
    names = [s.name for p in parts for s in p.samples]
    assert sorted(names) == sorted(s.name for s in data.samples)  # disjoint and complete
    again = stratified_split(data, (0.6, 0.2, 0.2), seed=1)
    assert [s.name for s in again[2].samples] == [s.name for s in parts[2].samples]
    with pytest.raises(DataError, match="sum to 1"):
        stratified_split(data, (0.5, 0.2), seed=1)


def test_elpv_labelled_split_takes_defect_probability_two_thirds_and_up():
    labelled = ELPV("labelled", cell_type="mono", defect_probability=2 / 3)
    types = {s.defect_type for s in labelled.samples if s.label == 1}
    assert types == {"p=0.67", "p=1.00"} and (labelled.labels == 0).sum() > 500


def test_the_last_three_convolutions_are_fine_tuned():
    model, _ = create_classifier("tf_efficientnet_lite0")
    chosen = trainable_convolutions(model, 3)
    names = {module: name for name, module in model.named_modules()}
    assert [names[m] for m in chosen] == [
        "blocks.6.0.conv_dw",
        "blocks.6.0.bn2",
        "blocks.6.0.conv_pwl",
        "blocks.6.0.bn3",
        "conv_head",
        "bn2",
    ]


def test_classifier_learns_defects_and_boxes_them(labelled_train, texture_test):
    model = fs.create("cam_classifier", **SMALL).fit(labelled_train, progress=False)
    assert model.is_calibrated and model.threshold_ == 0.5
    assert model.history_[-1]["loss"] < model.history_[0]["loss"]
    prediction = model.predict(texture_test, progress=False)
    assert auroc(texture_test.labels, prediction.scores) >= 0.9
    for label, boxes, mask in zip(prediction.labels, prediction.boxes, prediction.masks):
        assert len(boxes) == (1 if label else 0) and mask.any() == bool(label)
    metrics = fs.evaluate(model, texture_test, progress=False).metrics
    assert 0.0 <= metrics["box_iou_mean"] <= 1.0 and metrics["n_boxed_images"] == 12
    assert metrics["accuracy"] >= 0.8 and len(metrics["confusion_matrix"]) == 2


def test_fine_tuning_changes_only_the_chosen_layers(labelled_train):
    model = fs.create("cam_classifier", **{**SMALL, "max_epochs": 1})
    reference, _ = create_classifier("tf_efficientnet_lite0")
    model.fit(labelled_train, progress=False)
    trunk = dict(model.network_.trunk.named_parameters())
    for name, parameter in reference.named_parameters():
        if name.startswith("classifier"):
            continue
        changed = not torch.equal(parameter, trunk[name])
        assert changed == (
            name.startswith(
                ("conv_head", "bn2", "blocks.6.0.conv_dw", "blocks.6.0.bn2", "blocks.6.0.conv_pwl", "blocks.6.0.bn3")
            )
        ), name


def test_class_weights_are_checked(labelled_train):
    with pytest.raises(fs.ConfigError, match="class_weights"):
        fs.create("cam_classifier", class_weights=(1.0, -3.0), **SMALL).fit(labelled_train, progress=False)
