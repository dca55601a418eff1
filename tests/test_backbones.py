from pathlib import Path

import matplotlib
import pytest
import timm
import torch
from safetensors.torch import save_file

from flawscope.data.io import read_image
from flawscope.data.transforms import to_model_input
from flawscope.errors import WeightsError
from flawscope.features.backbones import OFFLINE_BACKBONES, create_classifier, create_feature_backbone
from flawscope.features.extractor import FeatureExtractor, local_patch_features

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM = 652  # ImageNet class of the classic Grace Hopper portrait


def test_offline_lite0_weights_classify_a_natural_image():
    model, _ = create_classifier("tf_efficientnet_lite0")
    cfg = OFFLINE_BACKBONES["tf_efficientnet_lite0"]
    batch = to_model_input([read_image(GRACE_HOPPER)], 224, cfg.mean, cfg.std)
    with torch.inference_mode():
        probabilities = model(batch).softmax(-1)[0]
    assert int(probabilities.argmax()) == MILITARY_UNIFORM
    assert float(probabilities[MILITARY_UNIFORM]) > 0.3


def test_feature_extractor_shapes_come_from_feature_info():
    extractor = FeatureExtractor("tf_efficientnet_lite0", layers=(2, 3))
    assert extractor.channels == [40, 112] and extractor.reductions == [8, 16]
    with torch.inference_mode():
        maps = extractor(torch.zeros(3, 3, 64, 64))
        patches = local_patch_features(maps)
    assert [tuple(m.shape) for m in maps] == [(3, 40, 8, 8), (3, 112, 4, 4)]
    assert tuple(patches.shape) == (3, 152, 8, 8)
    assert extractor.fingerprint.startswith("sha256:")


def test_micro_batching_does_not_change_features():
    extractor = FeatureExtractor("tf_efficientnet_lite0", layers=(2, 3))
    images = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        together = extractor(images)
        alone = [extractor(images[i : i + 1]) for i in range(5)]
    for layer, maps in enumerate(together):
        torch.testing.assert_close(
            maps, torch.cat([a[layer] for a in alone]), rtol=1e-4, atol=1e-4
        )  # convolution kernels differ by batch size


def test_backbone_without_offline_weights_is_refused():
    with pytest.raises(WeightsError, match="No offline weights for backbone 'resnet18'"):
        create_feature_backbone("resnet18", (1, 2))
    with pytest.raises(WeightsError, match="Unknown backbone"):
        FeatureExtractor("no_such_net", (1,))


def test_any_timm_backbone_from_a_local_weights_file(tmp_path):
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file(reference.state_dict(), str(path))
    model, fingerprint = create_feature_backbone("resnet18", (1, 2), weights=str(path))
    torch.testing.assert_close(
        model.state_dict()["layer1.0.conv1.weight"], reference.state_dict()["layer1.0.conv1.weight"]
    )
    assert fingerprint.startswith("sha256:")


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "wrong.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(path))
    with pytest.raises(WeightsError, match="do not match"):
        create_feature_backbone("resnet34", (1, 2), weights=str(path))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="Cannot read weights file"):
        create_feature_backbone("resnet18", (1, 2), weights=str(broken))
