"""Shared fixtures: small synthetic data and one fitted PatchCore reused read-only across tests."""

from __future__ import annotations

import pytest
import torch

import flawscope as fs
from flawscope.data.synthetic import make_texture_set

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def texture_train():
    return make_texture_set(12, 0, size=(96, 96), seed=0)


@pytest.fixture(scope="session")
def texture_test():
    return make_texture_set(12, 12, size=(96, 96), seed=1)


@pytest.fixture(scope="session")
def labelled_train():
    """Good and defective textures with masks, for supervised methods."""
    return make_texture_set(12, 12, size=(96, 96), seed=2)


@pytest.fixture(scope="session")
def fitted_patchcore(texture_train):
    """A small PatchCore fitted on synthetic textures. Tests must not modify it."""
    model = fs.create("patchcore", image_size=96, coreset_ratio=0.25, device="cpu", seed=0)
    return model.fit(texture_train, progress=False)


@pytest.fixture(scope="session")
def station_model(tmp_path_factory):
    """A calibrated PatchCore saved as a station serves it, in a folder named ``tiles`` (the service tests)."""
    from service_helpers import save_station_model

    return save_station_model(tmp_path_factory.mktemp("models") / "tiles")


@pytest.fixture(scope="session")
def part_images():
    """``(good, defective)`` PNG bytes for the service tests."""
    from service_helpers import station_images

    return station_images()
