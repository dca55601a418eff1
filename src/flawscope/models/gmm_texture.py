"""GMM Texture Inspection (Böttger & Ulrich, "Real-time texture error detection on textured surfaces
with compressed sensing", Pattern Recognition and Image Analysis 2016), as evaluated in the
MVTec AD paper (Bergmann et al., IJCV 2021).

Recipe (MVTec AD evaluation): images to grey and to 400 x 400; a four-level image pyramid; on each
level one Gaussian mixture with dense covariances over the 7 x 7 patches of at most 50 randomly
chosen training images; the anomaly map of a level is the negative log-likelihood of the patch
around every pixel; each level's map is normalised to mean 0 and standard deviation 1 over
held-out good images; the levels are brought to 400 x 400 and averaged. Image score: the
map's maximum.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from flawscope._progress import tracked
from flawscope._validation import Interval
from flawscope.data.datasets import ImageDataset, Sample
from flawscope.data.io import read_image
from flawscope.data.transforms import luma_batch
from flawscope.errors import ConfigError, DataError
from flawscope.features.clustering import GaussianMixture
from flawscope.maps import upsample_maps
from flawscope.models.base import RUN_CONSTRAINTS, Detector
from flawscope.models.registry import register_detector
from flawscope.state import checked_tensor


def pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``levels`` images, each half the size of the previous one (2 x 2 mean)."""
    out = [images]
    for _ in range(levels - 1):
        out.append(F.avg_pool2d(out[-1], 2))
    return out


def dense_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``N x 1 x H x W`` -> ``N x (H W) x patch_size^2``: the patch centred on every pixel (reflected borders)."""
    radius = patch_size // 2
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    return F.unfold(padded, patch_size).transpose(1, 2)


class GMMTexture(Detector):
    """GMM Texture Inspection: per-level Gaussian mixtures of grey 7 x 7 patches, z-normalised NLL maps.

    Parameters
    ----------
    image_size : int
        Images are turned grey and resized to ``image_size x image_size`` (paper: 400).
    levels : int
        Pyramid levels (paper: 4).
    patch_size : int
        Odd side of the patches on every level (paper: 7).
    n_components : int
        Gaussians per level. HALCON chooses this internally and the papers do not state it; 8
        is flawscope's default.
    max_train_images : int
        At most this many randomly chosen training images fit the mixtures (paper: 50).
    n_validation : int
        Good training images held out (not used by the mixtures) to normalise each level's
        scores; at least one is always held out.
    samples_per_level : int
        Random patches per level the EM runs on (all patches of 50 images at 400 px would be
        8 million; 50,000 keep a fit on 50 images under a minute on 2 CPU cores).
    max_iter : int
        EM iterations at most.
    batch_size : int
        Images per scoring pass.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the image choice, the patch sampling and the mixtures' k-means start.
    """

    _parameter_constraints = {
        "image_size": [Interval(int, 32, 4096)],
        "levels": [Interval(int, 1, 8)],
        "patch_size": [Interval(int, 3, 31)],
        "n_components": [Interval(int, 1, None)],
        "max_train_images": [Interval(int, 1, None)],
        "n_validation": [Interval(int, 1, None)],
        "samples_per_level": [Interval(int, 100, None)],
        "max_iter": [Interval(int, 1, None)],
        **RUN_CONSTRAINTS,
    }

    def __init__(
        self,
        *,
        image_size: int = 400,
        levels: int = 4,
        patch_size: int = 7,
        n_components: int = 8,
        max_train_images: int = 50,
        n_validation: int = 10,
        samples_per_level: int = 50_000,
        max_iter: int = 100,
        batch_size: int = 8,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.image_size = image_size
        self.levels = levels
        self.patch_size = patch_size
        self.n_components = n_components
        self.max_train_images = max_train_images
        self.n_validation = n_validation
        self.samples_per_level = samples_per_level
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.device = device
        self.seed = seed

    def _validate(self) -> None:
        super()._validate()
        if self.patch_size % 2 == 0:
            raise ConfigError(f"patch_size must be odd so every patch has a centre pixel; got {self.patch_size}.")
        smallest = self.image_size >> (self.levels - 1)
        if smallest <= self.patch_size:
            raise ConfigError(
                f"image_size {self.image_size} halved {self.levels - 1} times is {smallest} px, not larger than "
                f"the {self.patch_size} px patches; use fewer levels or a larger image_size."
            )

    def _model_input(self, images: torch.Tensor) -> torch.Tensor:
        return luma_batch(images)

    def _fit(self, dataset: ImageDataset, progress: bool) -> None:
        if len(dataset) < 2:
            raise DataError(
                f"gmm_texture needs at least 2 good images (one is held out to normalise); got {len(dataset)}."
            )
        generator = self._generator()
        order = torch.randperm(len(dataset), generator=generator).tolist()
        n_validation = min(self.n_validation, max(1, len(dataset) // 5))
        validation = [dataset.samples[i] for i in order[:n_validation]]
        training = [dataset.samples[i] for i in order[n_validation:][: self.max_train_images]]
        level_patches = self._sample_patches(training, generator, progress)
        self.mixtures_ = [
            GaussianMixture.fit(patches.to(self.device_), self.n_components, generator, max_iter=self.max_iter)
            for patches in tracked(level_patches, "mixtures", progress)
        ]
        self.level_mean_ = torch.zeros(self.levels, device=self.device_)
        self.level_std_ = torch.ones(self.levels, device=self.device_)
        self._normalise_levels(validation, progress)

    def _sample_patches(self, training: list[Sample], generator: torch.Generator, progress: bool) -> list[torch.Tensor]:
        """``samples_per_level`` random patches per level, drawn evenly from the training images."""
        per_image = -(-self.samples_per_level // len(training))
        level_patches: list[list[torch.Tensor]] = [[] for _ in range(self.levels)]
        for sample in tracked(training, "patches", progress):
            images = pyramid(self._to_tensor([read_image(sample.image)]), self.levels)
            for level, image in enumerate(images):
                patches = dense_patches(image, self.patch_size)[0]
                chosen = torch.randperm(patches.shape[0], generator=generator)[:per_image]
                level_patches[level].append(patches[chosen])
        return [torch.cat(patches)[: self.samples_per_level] for patches in level_patches]

    def _normalise_levels(self, validation: list[Sample], progress: bool) -> None:
        """Set each level's mean and standard deviation of the NLL over the held-out good images."""
        sums = torch.zeros(self.levels, dtype=torch.float64)
        squares = torch.zeros(self.levels, dtype=torch.float64)
        count = torch.zeros(self.levels, dtype=torch.float64)
        with torch.inference_mode():
            for batch in self._training_batches(validation, "normalising", progress):
                for level, nll in enumerate(self._level_maps(batch)):
                    values = nll.double().cpu()
                    sums[level] += values.sum()
                    squares[level] += values.square().sum()
                    count[level] += values.numel()
        mean = sums / count
        std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
        self.level_mean_ = mean.float().to(self.device_)
        self.level_std_ = std.float().to(self.device_)

    def _level_maps(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Raw NLL maps, one ``N x H_l x W_l`` tensor per pyramid level."""
        maps = []
        for mixture, image in zip(self.mixtures_, pyramid(batch, self.levels)):
            patches = dense_patches(image, self.patch_size)
            nll = mixture.negative_log_likelihood(patches.reshape(-1, patches.shape[2]))
            maps.append(nll.reshape(image.shape[0], image.shape[2], image.shape[3]))
        return maps

    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = (batch.shape[2], batch.shape[3])
        normalised = [
            upsample_maps((nll - self.level_mean_[level]) / self.level_std_[level], size)
            for level, nll in enumerate(self._level_maps(batch))
        ]
        anomaly_map = torch.stack(normalised).mean(dim=0)
        return anomaly_map.flatten(1).max(dim=1).values, anomaly_map

    def _export_refusal(self, graph_format: str) -> str | None:
        if graph_format == "openvino":
            return (
                "OpenVINO (2026.4, CPU) does not compute its graph right: scores off by 1e34, or a crash, where "
                "onnxruntime matches the library; export it with --format onnx"
            )
        return None

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"level_mean": self.level_mean_, "level_std": self.level_std_}
        for level, mixture in enumerate(self.mixtures_):
            tensors[f"level{level}.weights"] = mixture.weights
            tensors[f"level{level}.means"] = mixture.means
            tensors[f"level{level}.precision_cholesky"] = mixture.precision_cholesky
        return tensors

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        dim, components = self.patch_size**2, self.n_components
        self.mixtures_ = [
            GaussianMixture(
                checked_tensor(tensors, f"level{level}.weights", (components,)).to(self.device_),
                checked_tensor(tensors, f"level{level}.means", (components, dim)).to(self.device_),
                checked_tensor(tensors, f"level{level}.precision_cholesky", (components, dim, dim)).to(self.device_),
            )
            for level in range(self.levels)
        ]
        self.level_mean_ = checked_tensor(tensors, "level_mean", (self.levels,)).to(self.device_)
        self.level_std_ = checked_tensor(tensors, "level_std", (self.levels,)).to(self.device_)


register_detector(
    "gmm_texture",
    GMMTexture,
    test_params={"image_size": 64, "levels": 2, "patch_size": 5, "n_components": 2, "samples_per_level": 2000},
)
