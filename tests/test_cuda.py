"""The CUDA path gives the CPU path's scores. Runs only where CUDA exists."""

import numpy as np
import pytest
import torch

import flawscope as fs

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
