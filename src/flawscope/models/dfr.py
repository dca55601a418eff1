"""DFR (Yang, Shi & Qi, "DFR: Deep Feature Reconstruction for Unsupervised Anomaly Segmentation",
Neurocomputing 2021; arXiv 2012.07122).

Recipe: multi-scale regional features -- the maps of several backbone stages, each averaged over
small regions and brought to one grid (a quarter of the input side), concatenated per position;
a convolutional autoencoder of 1 x 1 convolutions (``C -> (C + 2c) / 2 -> 2c -> c`` and back,
batch norm and ReLU between) trained with the mean squared error to reconstruct the good images'
features; the number of latent channels ``c`` chosen by PCA keeping 90 % of the feature variance;
flawscope standardises every channel with the training mean and deviation first (EfficientNet
stage outputs differ in scale by orders of magnitude, unlike the paper's VGG ReLU features);
the anomaly map is the squared reconstruction error summed over channels, upsampled to the input.
Image score: the map's maximum.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flawscope._validation import NONE, Interval
from flawscope.data.datasets import ImageDataset
from flawscope.errors import ConfigError
from flawscope.features.clustering import PCA
from flawscope.maps import upsample_maps
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

_PCA_SAMPLES = 100_000


def regional_features(feature_maps: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """Stage maps -> ``N x C x grid`` regional features.

    Maps finer than ``grid`` are averaged over the region each grid cell covers (adaptive
    average pooling); coarser maps, whose cells already average larger regions, are resized
    bilinearly. Every stage thus describes the same grid of image regions at its own scale.
    """
    out = []
    for feature_map in feature_maps:
        if feature_map.shape[-2] >= grid[0]:
            out.append(F.adaptive_avg_pool2d(feature_map, grid))
        else:
            out.append(F.interpolate(feature_map, size=grid, mode="bilinear", align_corners=False))
    return torch.cat(out, dim=1).float()


def feature_autoencoder(in_channels: int, latent: int) -> nn.Sequential:
    """DFR's 1 x 1 convolutional autoencoder: ``C -> (C + 2c) / 2 -> 2c -> c -> 2c -> (C + 2c) / 2 -> C``."""
    widths = [in_channels, (in_channels + 2 * latent) // 2, 2 * latent, latent]
    widths = widths + widths[-2::-1]
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Conv2d(width_in, width_out, 1))
        last_of_half = index in (2, len(widths) - 2)  # the latent and the output layers are linear
        if not last_of_half:
            layers += [nn.BatchNorm2d(width_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class DFR(BackboneDetector):
    """DFR: a 1 x 1 convolutional autoencoder reconstructs multi-scale regional features.

    Parameters
    ----------
    backbone : str
        timm architecture; ``tf_efficientnet_lite0`` (default) has offline ImageNet weights
        (the paper used VGG19's ReLU layers).
    layers : sequence of int
        timm ``out_indices`` of the stages (EfficientNet-Lite: 0-3 = strides 2, 4, 8, 16).
    weights : str or None
        ``None`` for the offline EfficientNet-Lite weights, a weights file, or ``"hub"``.
    image_size : int
        Images are resized to ``image_size x image_size`` (paper: 256); features live on a grid
        of a quarter of that side.
    latent_channels : int or None
        ``c``; ``None`` (default) = the PCA rule of the paper (90 % of the variance).
    recipe : {"fast", "long", "paper"}
        ``"paper"``: the official code's 700 epochs; ``"fast"`` (default): 20, which fits a CPU in minutes;
        ``"long"``: the paper's 700, which fit 60 minutes of the 2-core CPU (``max_train_vectors`` bounds an
        epoch).
    epochs : int or None
        Passes over all training feature vectors; ``None`` = the recipe's.
    learning_rate : float
        Adam learning rate.
    vectors_per_step : int
        Feature vectors (grid positions) per optimiser step.
    max_train_vectors : int
        Training feature vectors kept in memory (as float16), sampled evenly over the images
        when there are more; bounds memory for large training sets.
    training_precision : {"auto", "float32", "bfloat16"}
        Arithmetic of the training steps: ``"auto"`` (default) trains in bfloat16 autocast where the device
        computes it in hardware and the method measured it faster at the same quality, float32 elsewhere.
    batch_size : int
        Images per backbone pass.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the vector sampling, the autoencoder's initial weights and the shuffling.
    """

    # "long" = the paper's: 28 ms a step of 8,192 vectors (training_speed.json), at most 123 steps an epoch
    # under the default max_train_vectors, 700 epochs <= 40 min
    recipes: ClassVar[dict[str, int]] = {"fast": 20, "long": 700, "paper": 700}
    _parameter_constraints = {
        **BACKBONE_CONSTRAINTS,
        "image_size": [Interval(int, 32, 4096)],
        "latent_channels": [NONE, Interval(int, 1, None)],
        **RECIPE_CONSTRAINTS,
        "epochs": [NONE, Interval(int, 1, None)],
        "learning_rate": [Interval(float, 0.0, None, "neither")],
        "vectors_per_step": [Interval(int, 2, None)],
        "max_train_vectors": [Interval(int, 100, None)],
        **TRAINING_CONSTRAINTS,
        **RUN_CONSTRAINTS,
    }

    def __init__(
        self,
        *,
        backbone: str = "tf_efficientnet_lite0",
        layers: tuple[int, ...] = (0, 1, 2, 3),
        weights: str | None = None,
        image_size: int = 256,
        latent_channels: int | None = None,
        recipe: str = "fast",
        epochs: int | None = None,
        learning_rate: float = 1e-3,
        vectors_per_step: int = 8192,
        max_train_vectors: int = 1_000_000,
        training_precision: str = "auto",
        batch_size: int = 16,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.image_size = image_size
        self.latent_channels = latent_channels
        self.recipe = recipe
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.vectors_per_step = vectors_per_step
        self.max_train_vectors = max_train_vectors
        self.training_precision = training_precision
        self.batch_size = batch_size
        self.device = device
        self.seed = seed

    def _autoencoder(self, channels: int, latent: int) -> nn.Sequential:
        """The feature autoencoder on the device, channels-last (its 1 x 1 convolutions run over the
        channels of each position: 1.37x the training steps per second of NCHW)."""
        return feature_autoencoder(channels, latent).to(self.device_).to(memory_format=torch.channels_last)

    def _grid(self) -> tuple[int, int]:
        side = max(1, self.image_size // 4)
        return side, side

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        """``N x C x h x w`` raw regional features."""
        return regional_features(self.extractor_(batch), self._grid())

    # ------------------------------------------------------------------ fit
    def _fit(self, dataset: ImageDataset, progress: bool) -> None:
        self._build_extractor()
        generator = self._generator()
        vectors = self._training_vectors(dataset, generator, progress)
        sample = vectors[
            torch.randperm(vectors.shape[0], generator=generator)[:_PCA_SAMPLES].to(vectors.device)
        ].float()
        self.feature_mean_ = sample.mean(dim=0)
        self.feature_std_ = sample.std(dim=0).clamp_min(1e-6)
        channels = vectors.shape[1]
        latent = self.latent_channels or int(PCA.fit(self._standardise(sample), 0.9).components.shape[1])
        if latent > channels:
            raise ConfigError(
                f"latent_channels={latent} exceeds the {channels} feature channels of layers {tuple(self.layers)}."
            )
        with self._seeded():  # seeded initial weights, global RNG left alone
            self.autoencoder_ = self._autoencoder(channels, latent)
        self.latent_ = latent
        self.training_precision_ = resolve_training_precision(self.training_precision, self.device_, True)
        epochs = recipe_epochs(self.name, self.recipes, self.recipe, self.epochs, self.training_precision_)
        self.loss_history_ = self._train(vectors, epochs, generator, progress)

    def _training_vectors(self, dataset: ImageDataset, generator: torch.Generator, progress: bool) -> torch.Tensor:
        """``M x C`` float16 feature vectors of the training images (at most ``max_train_vectors``).

        Filled in place, batch by batch, so peak memory is the result plus one batch.
        """
        grid = self._grid()
        per_image = min(grid[0] * grid[1], -(-self.max_train_vectors // len(dataset)))
        channels = sum(self.extractor_.channels)
        vectors = torch.empty(len(dataset) * per_image, channels, dtype=torch.float16, device=self.device_)
        filled = 0
        with torch.inference_mode():
            for batch in self._training_batches(dataset, "features", progress):
                rows = self._features(batch).flatten(2).transpose(1, 2)  # B x P x C
                for image_rows in rows:
                    if per_image < image_rows.shape[0]:
                        chosen = torch.randperm(image_rows.shape[0], generator=generator)[:per_image]
                        image_rows = image_rows[chosen.to(image_rows.device)]
                    vectors[filled : filled + per_image] = image_rows
                    filled += per_image
        return vectors

    def _standardise(self, features: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Per-channel z-scores with the training statistics (``dim`` indexes the channels)."""
        shape = [1] * features.ndim
        shape[dim] = -1
        return (features - self.feature_mean_.view(shape)) / self.feature_std_.view(shape)

    def _train(self, vectors: torch.Tensor, epochs: int, generator: torch.Generator, progress: bool) -> list[float]:
        """Adam on the mean squared reconstruction error; returns the mean loss of every epoch."""
        starts = range(0, vectors.shape[0] - 1, self.vectors_per_step)

        def epoch_batches(generator: torch.Generator) -> Iterator[torch.Tensor]:
            order = torch.randperm(vectors.shape[0], generator=generator).to(vectors.device)
            for start in starts:
                chunk = self._standardise(vectors[order[start : start + self.vectors_per_step]].float())
                if chunk.shape[0] >= 2:  # batch norm needs two vectors
                    yield chunk.T[None, :, :, None]  # 1 x C x M x 1: a 1 x 1 conv over M positions

        def step_loss(inputs: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(self.autoencoder_(inputs).float(), inputs)

        optimiser = torch.optim.Adam(self.autoencoder_.parameters(), lr=self.learning_rate)
        loop = TrainingLoop(
            [self.autoencoder_], optimiser, epoch_batches, step_loss, precision=self.training_precision_
        )
        history = loop.run(epochs=epochs, steps_per_epoch=len(starts), generator=generator, progress=progress)
        return history.epoch_losses

    # ------------------------------------------------------------------ predict
    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._standardise(self._features(batch))
        error = (self.autoencoder_(features) - features).square().sum(dim=1)  # N x h x w
        maps = upsample_maps(error, (batch.shape[2], batch.shape[3]))
        return maps.flatten(1).max(dim=1).values, maps

    # ------------------------------------------------------------------ state
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = module_tensors("autoencoder", self.autoencoder_)
        return {**tensors, "feature_mean": self.feature_mean_, "feature_std": self.feature_std_}

    def _state_meta(self) -> dict[str, Any]:
        return {
            **super()._state_meta(),
            "latent_channels": self.latent_,
            "loss_history": self.loss_history_,
            "training_precision": self.training_precision_,
        }

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._restore_extractor(meta)
        channels = sum(self.extractor_.channels)
        self.latent_ = int(meta["latent_channels"])
        self.loss_history_ = list(meta["loss_history"])
        self.training_precision_ = saved_training_precision(meta)
        self.autoencoder_ = self._autoencoder(channels, self.latent_)
        restore_module(self.autoencoder_, tensors, "autoencoder").eval()
        self.feature_mean_ = checked_tensor(tensors, "feature_mean", (channels,)).to(self.device_)
        self.feature_std_ = checked_tensor(tensors, "feature_std", (channels,)).to(self.device_)


register_detector("dfr", DFR, test_params={"image_size": 64, "epochs": 3, "vectors_per_step": 512})
