"""PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2021).

Recipe: the feature maps of three backbone stages, the deeper ones repeated (nearest
upsampling) to the finest resolution and concatenated; a seeded random subset of the channels
(100 for ResNet-18's 448); at every position ``(i, j)`` a multivariate Gaussian
``N(mu_ij, Sigma_ij + 0.01 I)`` of the good training images' embeddings; the anomaly map is the
Mahalanobis distance of each test embedding to its position's Gaussian, upsampled bilinearly
to the input size and smoothed with a Gaussian of sigma 4; the image score is the map's maximum.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from flawscope._validation import Interval
from flawscope.data.datasets import ImageDataset
from flawscope.errors import CalibrationWarning, ConfigError
from flawscope.maps import gaussian_blur, upsample_maps
from flawscope.models.base import BACKBONE_CONSTRAINTS, RUN_CONSTRAINTS, BackboneDetector
from flawscope.models.registry import UPDATABLE, register_detector
from flawscope.state import checked_tensor

_MEMORY_NOTICE_BYTES = 256 * 2**20


def stacked_embedding(feature_maps: list[torch.Tensor], channels: torch.Tensor) -> torch.Tensor:
    """Concatenate stage maps at the finest resolution (nearest upsampling) and keep ``channels``.

    Returns ``B x d x H x W`` with ``d = len(channels)``.
    """
    height, width = feature_maps[0].shape[-2:]
    resized = [
        m if m.shape[-2:] == (height, width) else F.interpolate(m, size=(height, width), mode="nearest")
        for m in feature_maps
    ]
    return torch.cat(resized, dim=1)[:, channels].float()


class GaussianAccumulator:
    """Per-position mean and scatter matrix, merged batch by batch (Chan et al.'s parallel update).

    Float32 stays accurate because every batch is centred on its own mean before it is merged.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None  # P x d
        self.scatter: torch.Tensor | None = None  # P x d x d

    @classmethod
    def resume(cls, count: int, mean: torch.Tensor, covariance: torch.Tensor) -> GaussianAccumulator:
        """An accumulator holding what :meth:`covariance` made of ``count`` embeddings, to merge more into."""
        accumulator = cls()
        accumulator.count, accumulator.mean = count, mean.clone()
        accumulator.scatter = covariance * max(count - 1, 1)
        return accumulator

    def update(self, embeddings: torch.Tensor) -> None:
        """Add ``B x P x d`` embeddings (in place: no second ``P x d x d`` buffer)."""
        batch_count = embeddings.shape[0]
        batch_mean = embeddings.mean(dim=0)
        centred = (embeddings - batch_mean).permute(1, 0, 2)  # P x B x d
        if self.mean is None or self.scatter is None:
            self.count, self.mean = batch_count, batch_mean
            self.scatter = centred.transpose(1, 2) @ centred
            return
        total = self.count + batch_count
        delta = batch_mean - self.mean
        self.scatter.baddbmm_(centred.transpose(1, 2), centred)
        self.scatter.baddbmm_(delta[:, :, None], delta[:, None, :], alpha=self.count * batch_count / total)
        self.mean += delta * (batch_count / total)
        self.count = total

    def covariance(self) -> torch.Tensor:
        """The unbiased covariance per position (0 for one image). Consumes the accumulator: the scatter
        matrices are divided in place."""
        assert self.scatter is not None
        covariance = self.scatter.div_(max(self.count - 1, 1))
        self.scatter = None
        return covariance


def precision_of(covariance: torch.Tensor, regularisation: float) -> torch.Tensor:
    """``(Sigma + regularisation I)^-1`` per position, inverted through its Cholesky factor."""
    regularised = covariance.clone()
    regularised.diagonal(dim1=1, dim2=2).add_(regularisation)
    return torch.cholesky_inverse(torch.linalg.cholesky(regularised))


def mahalanobis(embeddings: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """``B x P x d`` embeddings -> ``B x P`` distances ``sqrt((x - mu)^T Sigma^-1 (x - mu))``."""
    diff = (embeddings - mean).permute(1, 0, 2)  # P x B x d
    squared = ((diff @ precision) * diff).sum(dim=2).clamp_min(0.0)  # P x B
    return squared.sqrt().T


def model_bytes(positions: int, n_features: int) -> int:
    """Bytes of the per-position mean, covariance and precision matrices (float32)."""
    return 4 * positions * n_features * (2 * n_features + 1)


class PaDiM(BackboneDetector):
    """PaDiM: a Gaussian per feature-map position, Mahalanobis distance as the anomaly map.

    Parameters
    ----------
    backbone : str
        timm architecture; ``tf_efficientnet_lite0`` (default) has offline ImageNet weights.
    layers : sequence of int
        timm ``out_indices`` of the three stages (EfficientNet-Lite: 1, 2, 3 = strides 4, 8, 16,
        the counterparts of ResNet-18's layer1-3 used in the paper).
    weights : str or None
        ``None`` for the offline EfficientNet-Lite weights, a weights file, or ``"hub"``.
    image_size : int
        Images are resized to ``image_size x image_size`` (aspect ratio not kept, nothing cropped).
    n_features : int
        Size of the seeded random channel subset (paper: 100 of ResNet-18's 448). Must not exceed
        the channels of ``layers`` (176 for EfficientNet-Lite0 stages 1-3).
    regularisation : float
        ``epsilon`` of ``Sigma + epsilon I`` (paper: 0.01).
    smoothing_sigma : float
        Gaussian sigma of the anomaly map, in input pixels (paper: 4; 0 = none).
    batch_size : int
        Images per forward pass.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the channel subset.
    """

    count_: int | None  # None (with covariance_) in models saved by flawscope 0.1
    covariance_: torch.Tensor | None

    _parameter_constraints = {
        **BACKBONE_CONSTRAINTS,
        "image_size": [Interval(int, 32, 4096)],
        "n_features": [Interval(int, 1, None)],
        "regularisation": [Interval(float, 0.0, None, "neither")],
        "smoothing_sigma": [Interval(float, 0.0, None)],
        **RUN_CONSTRAINTS,
    }

    def __init__(
        self,
        *,
        backbone: str = "tf_efficientnet_lite0",
        layers: tuple[int, ...] = (1, 2, 3),
        weights: str | None = None,
        image_size: int = 224,
        n_features: int = 100,
        regularisation: float = 0.01,
        smoothing_sigma: float = 4.0,
        batch_size: int = 16,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.image_size = image_size
        self.n_features = n_features
        self.regularisation = regularisation
        self.smoothing_sigma = smoothing_sigma
        self.batch_size = batch_size
        self.device = device
        self.seed = seed

    def _build_extractor(self) -> None:
        super()._build_extractor()
        available = sum(self.extractor_.channels)
        if self.n_features > available:
            raise ConfigError(
                f"n_features={self.n_features} but layers {tuple(self.layers)} of {self.backbone} give only "
                f"{available} channels; choose n_features <= {available}."
            )

    def _embedding(self, batch: torch.Tensor) -> torch.Tensor:
        """``B x 3 x S x S`` -> ``B x P x d`` embeddings, positions row-major; remembers the grid size."""
        embedding = stacked_embedding(self.extractor_(batch), self.channels_)
        self.grid_ = tuple(embedding.shape[-2:])
        return embedding.flatten(2).transpose(1, 2)

    def _fit(self, dataset: ImageDataset, progress: bool) -> None:
        self._build_extractor()
        generator = self._generator()
        self.channels_ = torch.randperm(sum(self.extractor_.channels), generator=generator)[: self.n_features].to(
            self.device_
        )
        self._announce_memory()
        accumulator = GaussianAccumulator()
        with torch.inference_mode():
            for batch in self._training_batches(dataset, "features", progress):
                accumulator.update(self._embedding(batch))
            self._keep(accumulator)

    def _keep(self, accumulator: GaussianAccumulator) -> None:
        """Take the Gaussians of ``accumulator`` (new tensors: a model this one was copied from keeps its own)."""
        assert accumulator.mean is not None  # at least one image was accumulated
        self.count_ = accumulator.count
        self.mean_ = accumulator.mean.contiguous()
        self.covariance_ = accumulator.covariance().contiguous()
        self.precision_ = precision_of(self.covariance_, self.regularisation).contiguous()

    def _update(self, dataset: ImageDataset, progress: bool) -> dict[str, Any]:
        """Merge the new images' embeddings into every position's mean and covariance: exact, the same
        Gaussians (to float rounding) as a fit on the old and the new images together.

        New images unlike the old widen the covariances, and every Mahalanobis distance -- defects' too --
        falls: a threshold calibrated before no longer holds (measured on magnetic tile, 50 images of a new
        lighting: defect recall at the old threshold 0.39 -> 0.01). A calibrated model warns; recalibrate it.
        """
        if self.covariance_ is None or self.count_ is None:
            raise ConfigError(
                "This PaDiM was saved by an older flawscope without its covariances (only their inverses), which an "
                "update needs; fit it again to update it."
            )
        accumulator = GaussianAccumulator.resume(self.count_, self.mean_, self.covariance_)
        with torch.inference_mode():
            for batch in self._training_batches(dataset, "features", progress):
                accumulator.update(self._embedding(batch))
            self._keep(accumulator)
        if self.is_calibrated:
            warnings.warn(
                "PaDiM: an update changes the scale of every score (the covariances widen or narrow), so the "
                "threshold calibrated before no longer holds; recalibrate the updated model on good images it was "
                "not fitted on (recalibrate / calibrate).",
                CalibrationWarning,
                stacklevel=3,
            )
        return {"images_total": self.count_}

    def _announce_memory(self) -> None:
        """Warn when the model is large (the covariance grows with positions x features^2)."""
        side = -(-self.image_size // self.extractor_.reductions[0])
        size = model_bytes(side * side, self.n_features)
        if size >= _MEMORY_NOTICE_BYTES:
            warnings.warn(
                f"PaDiM: {side}x{side} positions x {self.n_features}^2 covariance and precision = "
                f"{size / 2**20:.0f} MiB for the model; lower image_size or n_features to shrink it.",
                stacklevel=4,
            )

    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distances = mahalanobis(self._embedding(batch), self.mean_, self.precision_).reshape(-1, *self.grid_)
        maps = gaussian_blur(upsample_maps(distances, (batch.shape[2], batch.shape[3])), self.smoothing_sigma)
        return maps.flatten(1).max(dim=1).values, maps

    def _tiling_refusal(self) -> str | None:
        return (
            "its Gaussians are per position of the model's input, so it learns where things are in an image. One "
            "PaDiM shared by all tiles would learn at each position a mixture of what every tile holds there (and "
            "find little unusual); one per tile position would need parts aligned to the pixel in images of one "
            "size, and a model per tile (each tens to hundreds of MB). Tile a position-free method instead: "
            "PatchCore, DFR, SimpleNet, EfficientAD, the autoencoders, the Feature Dictionary or the GMM."
        )

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        if self.covariance_ is None:  # loaded from flawscope 0.1
            return {"mean": self.mean_, "precision": self.precision_, "channels": self.channels_}
        return {"mean": self.mean_, "covariance": self.covariance_, "channels": self.channels_}

    def _state_meta(self) -> dict[str, Any]:
        return {**super()._state_meta(), "grid": list(self.grid_), "count": self.count_}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """The saved covariances give back the precisions the fit computed from them, bit for bit; a model of
        flawscope 0.1 holds the precisions only (it scores, but cannot be updated)."""
        self._restore_extractor(meta)
        self.grid_ = tuple(meta["grid"])
        positions, dim = self.grid_[0] * self.grid_[1], self.n_features
        self.mean_ = checked_tensor(tensors, "mean", (positions, dim)).to(self.device_).contiguous()
        self.channels_ = checked_tensor(tensors, "channels", (dim,)).to(self.device_)
        if "covariance" not in tensors:
            self.count_, self.covariance_ = None, None
            self.precision_ = checked_tensor(tensors, "precision", (positions, dim, dim)).to(self.device_).contiguous()
            return
        self.count_ = int(meta["count"])
        self.covariance_ = checked_tensor(tensors, "covariance", (positions, dim, dim)).to(self.device_).contiguous()
        self.precision_ = precision_of(self.covariance_, self.regularisation).contiguous()


register_detector("padim", PaDiM, test_params={"image_size": 64, "n_features": 40}, capabilities=[UPDATABLE])
