"""The one training loop (flawscope.training) and the checked state helpers (flawscope.state)."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

import flawscope as fs
from flawscope import training
from flawscope.devices import native_bfloat16
from flawscope.errors import ConfigError, ModelFileError
from flawscope.models.registry import list_models, model_entry
from flawscope.state import checked_tensor, module_tensors, restore_module
from flawscope.training import EarlyStopping, TrainingLoop, resolve_training_precision


def regression_loop(network, early_stopping=None, stop_after_epoch=None, scheduler=None):
    inputs = torch.linspace(-1, 1, 32)[:, None]
    targets = 3 * inputs + 1

    def epoch_batches(generator):
        order = torch.randperm(32, generator=generator)
        for start in range(0, 32, 8):
            yield inputs[order[start : start + 8]], targets[order[start : start + 8]]

    def step_loss(batch):
        x, y = batch
        return (network(x) - y).square().mean()

    optimiser = torch.optim.SGD(network.parameters(), lr=0.1)
    return TrainingLoop([network], optimiser, epoch_batches, step_loss, scheduler, early_stopping, stop_after_epoch)


def test_the_loop_trains_seeded_and_records_its_history():
    torch.manual_seed(0)
    first, second = nn.Linear(1, 1), nn.Linear(1, 1)
    second.load_state_dict(first.state_dict())
    history = regression_loop(first).run(
        epochs=20, steps_per_epoch=4, generator=torch.Generator().manual_seed(1), progress=False
    )
    again = regression_loop(second).run(
        epochs=20, steps_per_epoch=4, generator=torch.Generator().manual_seed(1), progress=False
    )
    assert len(history.epoch_losses) == 20 and len(history.step_losses) == 80
    assert history.epoch_losses[-1] < 0.01 * history.epoch_losses[0]
    assert history.step_losses == again.step_losses  # same generator, same draws, same steps
    assert not first.training  # evaluation mode at the end


def test_a_bfloat16_loop_computes_in_bfloat16_and_keeps_float32_weights():
    torch.manual_seed(0)
    network = nn.Linear(1, 1)
    loop = regression_loop(network)
    loop.precision = "bfloat16"
    output_dtypes = []
    step_loss = loop.step_loss

    def recorded(batch):
        output_dtypes.append(network(batch[0]).dtype)
        return step_loss(batch)

    loop.step_loss = recorded
    history = loop.run(epochs=20, steps_per_epoch=4, generator=torch.Generator().manual_seed(1), progress=False)
    assert set(output_dtypes) == {torch.bfloat16} and network.weight.dtype == torch.float32
    assert history.epoch_losses[-1] < 0.01 * history.epoch_losses[0]
    assert network(torch.ones(1, 1)).dtype == torch.float32  # autocast only inside the steps


def test_training_precision_auto_follows_the_hardware_and_the_method(caplog, monkeypatch):
    cpu = torch.device("cpu")
    native = native_bfloat16()
    assert resolve_training_precision("auto", cpu, bfloat16_pays=True) == ("bfloat16" if native else "float32")
    assert resolve_training_precision("auto", cpu, bfloat16_pays=False) == "float32"
    assert resolve_training_precision("float32", cpu, bfloat16_pays=True) == "float32"
    assert resolve_training_precision("bfloat16", cpu, bfloat16_pays=False) == "bfloat16"
    assert ("emulates bfloat16" in caplog.text) == (not native)
    monkeypatch.setattr(training, "native_bfloat16", lambda: False)  # a CPU that emulates bfloat16
    assert resolve_training_precision("auto", cpu, bfloat16_pays=True) == "float32"
    assert resolve_training_precision("bfloat16", cpu, bfloat16_pays=True) == "bfloat16"
    assert "emulates bfloat16" in caplog.text
    with pytest.raises(ConfigError, match="'training_precision' parameter of DFR must be a str among"):
        fs.create("dfr", training_precision="float16").fit([np.zeros((64, 64), np.float32)] * 2, progress=False)


def test_every_trained_method_has_fast_long_and_paper_recipes_in_that_order_of_length():
    trained = {
        name: model_entry(name).detector.recipes
        for name in list_models()
        if hasattr(model_entry(name).detector, "recipes")
    }
    assert set(trained) == {
        "ae_l2",
        "ae_ssim",
        "ae_mse",
        "vae",
        "feature_matching_ae",
        "dfr",
        "simplenet",
        "efficientad",
    }
    for name, recipes in trained.items():
        assert tuple(recipes) == training.RECIPES, name
        fast, long, paper = (training.training_length(recipes[recipe]) for recipe in training.RECIPES)
        assert fast < long <= paper, name


def test_dfr_trains_the_recipes_epochs_and_says_how_far_from_the_paper(caplog):
    images = [np.random.default_rng(seed).random((64, 64), np.float32) for seed in range(2)]
    params = {"image_size": 64, "vectors_per_step": 512, "device": "cpu"}
    with caplog.at_level(logging.INFO, logger="flawscope"):
        model = fs.create("dfr", epochs=2, **params).fit(images, progress=False)
    assert len(model.loss_history_) == 2
    assert "dfr: training 2 epochs" in caplog.text and "the paper: 700 epochs, 350x as long" in caplog.text
    with pytest.raises(ConfigError, match=r"'recipe' parameter of DFR must be a str among \{'fast', 'long', 'paper'\}"):
        fs.create("dfr", recipe="slow", **params).fit(images, progress=False)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    network = nn.Linear(1, 1)
    figures = iter([5.0, 3.0, 4.0, 4.5, 1.0])  # held-out figure after each epoch; lower is better
    kept = {}

    def measure():
        value = next(figures)
        kept[value] = network.weight.detach().clone()
        return value

    stopping = EarlyStopping(measure, network, patience=2)
    history = regression_loop(network, stopping).run(
        epochs=5, steps_per_epoch=4, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert history.validation == [5.0, 3.0, 4.0, 4.5] and history.best_epoch == 2  # two epochs worse: stop
    assert torch.equal(network.weight, kept[3.0])  # the best epoch's weights are back
    higher = EarlyStopping(lambda: 1.0, network, higher_is_better=True, ties_improve=True)
    assert higher.improves(1.0, 1.0) and higher.improves(2.0, 1.0) and not higher.improves(0.5, 1.0)


def test_stop_after_epoch_ends_training():
    history = regression_loop(nn.Linear(1, 1), stop_after_epoch=lambda: True).run(
        epochs=10, steps_per_epoch=4, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert len(history.epoch_losses) == 1


def test_state_helpers_restore_and_name_what_does_not_fit():
    network = nn.Sequential(nn.Linear(3, 2))
    tensors = module_tensors("net", network)
    assert set(tensors) == {"net.0.weight", "net.0.bias"}
    restored = restore_module(nn.Sequential(nn.Linear(3, 2)), tensors, "net")
    assert torch.equal(restored[0].weight, network[0].weight)
    with pytest.raises(ModelFileError, match="'net' network does not fit"):
        restore_module(nn.Sequential(nn.Linear(4, 2)), tensors, "net")
    with pytest.raises(ModelFileError, match="no tensors of the 'other' network"):
        restore_module(network, tensors, "other")
    assert checked_tensor(tensors, "net.0.weight", (2, None)).shape == (2, 3)
    with pytest.raises(ModelFileError, match=r"has shape \(2, 3\); the model's parameters need \(2, 4\)"):
        checked_tensor(tensors, "net.0.weight", (2, 4))
    with pytest.raises(ModelFileError, match="lacks the tensor 'mean'"):
        checked_tensor(tensors, "mean")
