"""Multi-layer feature maps from a frozen backbone, and locally aware patch features."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flawscope.features.backbones import BackboneCfg, backbone_cfg, create_feature_backbone


class FeatureExtractor(nn.Module):
    """A frozen timm backbone that returns the feature maps of the stages ``layers``.

    ``layers`` are timm ``out_indices``: for EfficientNet-Lite, 0..4 are the stages of stride
    2, 4, 8, 16 and 32. The backbone runs only as far as the deepest requested stage.

    Examples
    --------
    >>> extractor = FeatureExtractor("tf_efficientnet_lite0", layers=(2, 3))
    >>> [tuple(f.shape) for f in extractor(torch.zeros(1, 3, 224, 224))]
    [(1, 40, 28, 28), (1, 112, 14, 14)]
    """

    def __init__(self, backbone: str, layers: Sequence[int], weights: str | None = None) -> None:
        super().__init__()
        self.cfg: BackboneCfg = backbone_cfg(backbone)
        self.model, self.fingerprint = create_feature_backbone(backbone, layers, weights)
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: list[int] = list(self.model.feature_info.reduction())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``N x 3 x H x W`` normalised images -> one ``N x C_l x H_l x W_l`` map per layer."""
        return self.model(images)


def local_patch_features(feature_maps: Sequence[torch.Tensor], neighbourhood: int = 3) -> torch.Tensor:
    """Locally aware patch features (Roth et al. 2022, eq. 2).

    Each map is averaged over a ``neighbourhood x neighbourhood`` window (stride 1, so the
    resolution is kept), every map is upsampled bilinearly to the largest one, and the maps are
    concatenated along channels.

    Returns
    -------
    torch.Tensor
        ``N x D x H x W`` with ``D = sum(C_l)`` and ``H x W`` the size of the largest map.
    """
    pool = nn.AvgPool2d(neighbourhood, stride=1, padding=neighbourhood // 2, count_include_pad=False)
    target = max((f.shape[-2:] for f in feature_maps), key=lambda hw: hw[0] * hw[1])
    pooled = []
    for feature_map in feature_maps:
        feature_map = pool(feature_map)
        if feature_map.shape[-2:] != target:
            feature_map = F.interpolate(feature_map, size=tuple(target), mode="bilinear", align_corners=False)
        pooled.append(feature_map)
    return torch.cat(pooled, dim=1)
