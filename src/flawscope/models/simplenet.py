"""SimpleNet (Liu, Zhou, Wang & Wang, "SimpleNet: A Simple Network for Image Anomaly Detection
and Localization", CVPR 2023).

Recipe: frozen pretrained features of two mid-level stages, each averaged over a 3 x 3
neighbourhood and brought to the finer stage's grid (PatchCore's locally aware features); a
linear feature adaptor; anomalous features made by adding Gaussian noise to adapted normal
ones; a discriminator (linear -> batch norm -> leaky ReLU 0.2 -> linear) trained with the
truncated L1 loss ``max(0, m - D(normal)) + max(0, m + D(anomalous))`` (margin ``m = 0.5``),
adaptor and discriminator together with Adam (1e-4 and 2e-4, weight decay 1e-5). Anomaly map:
``-D`` of every position's adapted feature, upsampled and smoothed with a Gaussian of sigma 4;
image score: the highest ``-D`` of the image's positions (the authors' code).

flawscope standardises every feature channel with the training mean and deviation first (the
paper's WideResNet-50 features are pooled to 1536 dimensions of one scale; EfficientNet-Lite
stages differ in scale by orders of magnitude), so ``noise_std`` is in units of a channel's
deviation.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flawscope._validation import NONE, Interval
from flawscope.data.datasets import ImageDataset
from flawscope.features.extractor import local_patch_features, patch_rows
from flawscope.maps import gaussian_blur, upsample_maps
from flawscope.models.base import BACKBONE_CONSTRAINTS, RUN_CONSTRAINTS, BackboneDetector
from flawscope.models.registry import register_detector
from flawscope.state import checked_tensor, module_tensors, restore_module
from flawscope.training import (
    RECIPE_CONSTRAINTS,
    TRAINING_CONSTRAINTS,
    TrainingLoop,
    recipe_epochs,
    resolve_training_precision,
    saved_training_precision,
)


def feature_adaptor(dim: int) -> nn.Linear:
    """The adaptor: one linear layer, Xavier-normal initialised as in the authors' code."""
    layer = nn.Linear(dim, dim)
    nn.init.xavier_normal_(layer.weight)
    return layer


def discriminator(dim: int, hidden: int) -> nn.Sequential:
    """``dim -> hidden`` (batch norm, leaky ReLU 0.2) ``-> 1``; positive = normal."""
    network = nn.Sequential(
        nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1, bias=False)
    )
    for layer in network:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
    return network


def truncated_l1_loss(normal_scores: torch.Tensor, anomalous_scores: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean(max(0, m - D(normal))) + mean(max(0, m + D(anomalous)))`` (eq. 6 of the paper)."""
    return F.relu(margin - normal_scores).mean() + F.relu(margin + anomalous_scores).mean()


class SimpleNet(BackboneDetector):
    """SimpleNet: a discriminator tells adapted normal features from noise-perturbed ones.

    Parameters
    ----------
    backbone : str
        timm architecture; ``tf_efficientnet_lite0`` (default) has offline ImageNet weights
        (the paper used WideResNet-50 layers 2 and 3).
    layers : sequence of int
        timm ``out_indices`` of the two mid-level stages (EfficientNet-Lite: 2, 3 = strides 8, 16).
    weights : str or None
        ``None`` for the offline EfficientNet-Lite weights, a weights file, or ``"hub"``.
    image_size : int
        Images are resized to ``image_size x image_size`` (paper: 288).
    noise_std : float
        Deviation of the Gaussian noise that makes anomalous features, in units of a
        standardised channel's deviation.
    hidden : int
        Width of the discriminator's hidden layer (paper: 1024).
    margin : float
        The truncated L1 loss's margin ``m`` (paper: 0.5).
    recipe : {"fast", "long", "paper"}
        ``"paper"``: 160 epochs; ``"fast"`` (default): 40, which fits a CPU; ``"long"``: the paper's 160,
        which fit 60 minutes of the 2-core CPU.
    epochs : int or None
        Passes over all training features; ``None`` = the recipe's.
    adaptor_lr, discriminator_lr, weight_decay : float
        Adam's learning rates of the adaptor and the discriminator, and the discriminator's
        weight decay (paper: 1e-4, 2e-4, 1e-5).
    smoothing_sigma : float
        Gaussian smoothing of the upsampled map, in pixels (paper: 4).
    training_precision : {"auto", "float32", "bfloat16"}
        Arithmetic of the training steps: ``"auto"`` (default) trains in bfloat16 autocast where the device
        computes it in hardware and the method measured it faster at the same quality, float32 elsewhere.
    batch_size : int
        Images per backbone pass; one training step takes the features of as many images.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the initial weights, the shuffling and the noise.
    """

    # "long" = the paper's: its 160 epochs fit 60 minutes of the 2-core CPU (201 ms a step of 8 images' features)
    recipes: ClassVar[dict[str, int]] = {"fast": 40, "long": 160, "paper": 160}
    _parameter_constraints = {
        **BACKBONE_CONSTRAINTS,
        "image_size": [Interval(int, 32, 4096)],
        "noise_std": [Interval(float, 0.0, None, "neither")],
        "hidden": [Interval(int, 1, None)],
        "margin": [Interval(float, 0.0, None)],
        **RECIPE_CONSTRAINTS,
        "epochs": [NONE, Interval(int, 1, None)],
        "adaptor_lr": [Interval(float, 0.0, None, "neither")],
        "discriminator_lr": [Interval(float, 0.0, None, "neither")],
        "weight_decay": [Interval(float, 0.0, None)],
        "smoothing_sigma": [Interval(float, 0.0, None)],
        **TRAINING_CONSTRAINTS,
        **RUN_CONSTRAINTS,
    }

    def __init__(
        self,
        *,
        backbone: str = "tf_efficientnet_lite0",
        layers: tuple[int, ...] = (2, 3),
        weights: str | None = None,
        image_size: int = 288,
        noise_std: float = 0.5,
        hidden: int = 1024,
        margin: float = 0.5,
        recipe: str = "fast",
        epochs: int | None = None,
        adaptor_lr: float = 1e-4,
        discriminator_lr: float = 2e-4,
        weight_decay: float = 1e-5,
        smoothing_sigma: float = 4.0,
        training_precision: str = "auto",
        batch_size: int = 8,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.image_size = image_size
        self.noise_std = noise_std
        self.hidden = hidden
        self.margin = margin
        self.recipe = recipe
        self.epochs = epochs
        self.adaptor_lr = adaptor_lr
        self.discriminator_lr = discriminator_lr
        self.weight_decay = weight_decay
        self.smoothing_sigma = smoothing_sigma
        self.training_precision = training_precision
        self.batch_size = batch_size
        self.device = device
        self.seed = seed

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        """``N x D x h x w`` locally aware features, standardised once fitted."""
        return local_patch_features(self.extractor_(batch)).float()

    def _standardise(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows - self.feature_mean_) / self.feature_std_

    # ------------------------------------------------------------------ fit
    def _fit(self, dataset: ImageDataset, progress: bool) -> None:
        self._build_extractor()
        rows = self._training_rows(dataset, progress)
        self.feature_mean_ = rows.mean(dim=0)
        self.feature_std_ = rows.std(dim=0).clamp_min(1e-6)
        self.training_precision_ = resolve_training_precision(self.training_precision, self.device_, True)
        epochs = recipe_epochs(self.name, self.recipes, self.recipe, self.epochs, self.training_precision_)
        with self._seeded():  # the layers' initial weights
            dim = rows.shape[1]
            self.adaptor_ = feature_adaptor(dim).to(self.device_)
            self.discriminator_ = discriminator(dim, self.hidden).to(self.device_)
        self.loss_history_ = self._train(rows, epochs, rows.shape[0] // len(dataset) * self.batch_size, progress)

    def _training_rows(self, dataset: ImageDataset, progress: bool) -> torch.Tensor:
        """``(N * h * w) x D`` raw features of every training position (float32)."""
        with torch.inference_mode():
            batches = self._training_batches(dataset, "features", progress)
            rows = torch.cat([patch_rows(self._features(batch)) for batch in batches])
        return rows.clone()

    def _train(self, rows: torch.Tensor, epochs: int, rows_per_step: int, progress: bool) -> list[float]:
        """Adam on the truncated L1 loss; returns every epoch's mean loss."""
        starts = range(0, rows.shape[0] - 1, rows_per_step)
        generator = self._generator()

        def epoch_batches(generator: torch.Generator) -> Iterator[torch.Tensor]:
            order = torch.randperm(rows.shape[0], generator=generator).to(rows.device)
            for start in starts:
                yield self._standardise(rows[order[start : start + rows_per_step]])

        optimiser = torch.optim.Adam(
            [
                {"params": self.adaptor_.parameters(), "lr": self.adaptor_lr},
                {
                    "params": self.discriminator_.parameters(),
                    "lr": self.discriminator_lr,
                    "weight_decay": self.weight_decay,
                },
            ]
        )
        networks = [self.adaptor_, self.discriminator_]
        loss = partial(self._loss, generator=generator)
        loop = TrainingLoop(networks, optimiser, epoch_batches, loss, precision=self.training_precision_)
        return loop.run(epochs=epochs, steps_per_epoch=len(starts), generator=generator, progress=progress).epoch_losses

    def _loss(self, normal_rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Truncated L1 loss of adapted normal features and their noise-perturbed copies."""
        adapted = self.adaptor_(normal_rows)
        noise = torch.randn(adapted.shape, generator=generator).to(adapted.device)
        anomalous = adapted + self.noise_std * noise
        scores = self.discriminator_(torch.cat([adapted, anomalous]))[:, 0].float()
        normal_scores, anomalous_scores = scores.split(adapted.shape[0])
        return truncated_l1_loss(normal_scores, anomalous_scores, self.margin)

    # ------------------------------------------------------------------ predict
    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._features(batch)
        count, _, height, width = features.shape
        patch_scores = -self.discriminator_(self.adaptor_(self._standardise(patch_rows(features))))[:, 0]
        patch_scores = patch_scores.reshape(count, height, width)
        maps = gaussian_blur(upsample_maps(patch_scores, (batch.shape[2], batch.shape[3])), self.smoothing_sigma)
        return patch_scores.flatten(1).max(dim=1).values, maps

    # ------------------------------------------------------------------ state
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = module_tensors("adaptor", self.adaptor_) | module_tensors("discriminator", self.discriminator_)
        return {**tensors, "feature_mean": self.feature_mean_, "feature_std": self.feature_std_}

    def _state_meta(self) -> dict[str, Any]:
        return {
            **super()._state_meta(),
            "loss_history": self.loss_history_,
            "training_precision": self.training_precision_,
        }

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._restore_extractor(meta)
        dim = sum(self.extractor_.channels)
        self.adaptor_ = restore_module(feature_adaptor(dim), tensors, "adaptor").to(self.device_).eval()
        self.discriminator_ = restore_module(discriminator(dim, self.hidden), tensors, "discriminator")
        self.discriminator_.to(self.device_).eval()
        self.feature_mean_ = checked_tensor(tensors, "feature_mean", (dim,)).to(self.device_)
        self.feature_std_ = checked_tensor(tensors, "feature_std", (dim,)).to(self.device_)
        self.loss_history_ = list(meta["loss_history"])
        self.training_precision_ = saved_training_precision(meta)


register_detector("simplenet", SimpleNet, test_params={"image_size": 64, "epochs": 3, "noise_std": 0.5})
