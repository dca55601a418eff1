"""SimpleNet: the paper's adaptor, discriminator and loss; training on synthetic defects."""

import numpy as np
import pytest
import torch

import flawscope as fs
from flawscope.metrics import auroc
from flawscope.models.simplenet import discriminator, feature_adaptor, truncated_l1_loss


def test_truncated_l1_loss_by_hand():
    normal = torch.tensor([1.0, 0.25, -1.0])  # margins missed: 0, 0.25, 1.5
    anomalous = torch.tensor([-1.0, 0.0])  # 0, 0.5
    assert truncated_l1_loss(normal, anomalous, 0.5).item() == pytest.approx(1.75 / 3 + 0.5 / 2)


def test_adaptor_and_discriminator_shapes():
    assert tuple(feature_adaptor(152).weight.shape) == (152, 152)
    network = discriminator(152, 1024)
    assert [type(m).__name__ for m in network] == ["Linear", "BatchNorm1d", "LeakyReLU", "Linear"]
    assert network[2].negative_slope == 0.2 and network[3].bias is None
    assert network.eval()(torch.zeros(5, 152)).shape == (5, 1)


def test_simplenet_training_lowers_the_loss_and_finds_defects(texture_train, texture_test):
    model = fs.create("simplenet", image_size=96, epochs=10, noise_std=0.5, device="cpu").fit(
        texture_train, progress=False
    )
    assert model.loss_history_[-1] < 0.7 * model.loss_history_[0]
    prediction = model.predict(texture_test, progress=False)
    assert auroc(texture_test.labels, prediction.scores) >= 0.9
    defective = int(np.argmax(texture_test.labels))
    mask = texture_test[defective].mask
    anomaly_map = prediction.anomaly_maps[defective]
    assert anomaly_map[mask > 0].mean() > anomaly_map[mask == 0].mean()


def test_simplenet_trains_in_bfloat16_where_asked(texture_train, texture_test):
    model = fs.create("simplenet", image_size=96, epochs=10, training_precision="bfloat16", device="cpu")
    model.fit(texture_train, progress=False)
    assert model.training_precision_ == "bfloat16" and model.adaptor_.weight.dtype == torch.float32
    assert auroc(texture_test.labels, model.predict(texture_test, progress=False).scores) >= 0.9
