"""CNN Feature Dictionary (Napoletano, Piccoli & Schettini, "Anomaly Detection in Nanofibrous
Materials by CNN-Based Self-Similarity", Sensors 2018), as evaluated in the MVTec AD paper
(Bergmann et al., IJCV 2021).

Recipe: 128 x 128 patches of the good training images at their original resolution; each patch
described by the global average of a pretrained CNN's last feature map; PCA keeping 95 % of the
variance; k-means with 50 centres; the dictionary is the real training descriptor nearest to each
centre; a patch's score is its distance to the nearest dictionary entry. The map is evaluated
with a stride of 8 pixels; every pixel gets the mean score of the patches that cover it.

Dense evaluation without a loop per patch: the descriptor of a patch is the average of the
backbone's last feature map (stride 32) over the patch's 4 x 4 cells, so one forward pass of the
whole image gives the descriptors of all patches whose corners lie on a 32-pixel grid. The image
is passed once per offset ``(dy, dx)`` in ``{0, 8, 16, 24}^2`` -- 16 passes, batched -- which
gives every patch on the 8-pixel grid. A descriptor computed this way sees the patch's
surroundings through the receptive field, unlike a descriptor of the cropped patch; training and
test descriptors are computed the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flawscope._memory import release_freed_memory
from flawscope._progress import tracked
from flawscope._validation import Interval
from flawscope.data.datasets import ImageDataset
from flawscope.data.io import read_image
from flawscope.data.transforms import normalise, rgb_tensor
from flawscope.errors import ConfigError
from flawscope.features.clustering import PCA, kmeans, pairwise_squared_distances
from flawscope.models.base import BACKBONE_CONSTRAINTS, RUN_CONSTRAINTS, BackboneDetector
from flawscope.models.registry import register_detector
from flawscope.state import checked_tensor


def mean_of_covering_patches(
    patch_scores: torch.Tensor, cells: int, stride: int, size: tuple[int, int]
) -> torch.Tensor:
    """``ny x nx`` scores of patches ``cells * stride`` px wide on a ``stride`` grid -> ``H x W`` map.

    Each ``stride x stride`` block gets the mean score of the patches covering it; rows or columns
    beyond the last patch (when the image size is not on the grid) repeat the nearest block.
    """
    ones = torch.ones(1, 1, cells, cells, dtype=patch_scores.dtype, device=patch_scores.device)
    sums = F.conv_transpose2d(patch_scores[None, None], ones)
    counts = F.conv_transpose2d(torch.ones_like(patch_scores)[None, None], ones)
    blocks = F.interpolate(sums / counts, scale_factor=stride, mode="nearest")
    pad_bottom, pad_right = size[0] - blocks.shape[2], size[1] - blocks.shape[3]
    return F.pad(blocks, (0, pad_right, 0, pad_bottom), mode="replicate")[0, 0]


class FeatureDictionary(BackboneDetector):
    """CNN Feature Dictionary: nearest-dictionary-word distance of global-pooled patch descriptors.

    Parameters
    ----------
    backbone : str
        timm architecture; ``tf_efficientnet_lite0`` (default) has offline ImageNet weights
        (the paper used ResNet-18).
    layers : sequence of int
        The one stage whose map is pooled into descriptors (EfficientNet-Lite: 4, the last
        stage, stride 32, 320 channels -- the counterpart of ResNet-18's 512-d average pool).
    weights : str or None
        ``None`` for the offline EfficientNet-Lite weights, a weights file, or ``"hub"``.
    patch_size : int
        Side of the square patches in pixels of the original image (paper: 128); a multiple of
        the stage's stride. Images smaller than this are enlarged so their short side fits one patch.
    stride : int
        Step of the evaluated patches (paper: 8); divides the stage's stride.
    n_patches : int
        Training descriptors drawn at random (paper: 100,000), spread evenly over the images.
    variance : float
        Fraction of the descriptors' variance the PCA keeps (paper: 0.95).
    n_centres : int
        k-means centres, i.e. dictionary words (paper: 50).
    batch_size : int
        Images per ``predict`` chunk (each image is scored at its own size).
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the patch sampling and k-means.
    """

    _parameter_constraints = {
        **BACKBONE_CONSTRAINTS,
        "patch_size": [Interval(int, 8, None)],
        "stride": [Interval(int, 1, None)],
        "n_patches": [Interval(int, 1, None)],
        "variance": [Interval(float, 0.0, 1.0, "right")],
        "n_centres": [Interval(int, 1, None)],
        **RUN_CONSTRAINTS,
    }

    def __init__(
        self,
        *,
        backbone: str = "tf_efficientnet_lite0",
        layers: tuple[int, ...] = (4,),
        weights: str | None = None,
        patch_size: int = 128,
        stride: int = 8,
        n_patches: int = 100_000,
        variance: float = 0.95,
        n_centres: int = 50,
        batch_size: int = 8,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.patch_size = patch_size
        self.stride = stride
        self.n_patches = n_patches
        self.variance = variance
        self.n_centres = n_centres
        self.batch_size = batch_size
        self.device = device
        self.seed = seed

    def _build_extractor(self) -> None:
        if len(self.layers) != 1:
            raise ConfigError(f"feature_dictionary pools one stage; got layers={tuple(self.layers)}.")
        super()._build_extractor()
        reduction = self.extractor_.reductions[0]
        if self.patch_size % reduction or reduction % self.stride:
            raise ConfigError(
                f"With {self.backbone} stage {self.layers[0]} (stride {reduction}) patch_size must be a multiple of "
                f"{reduction} and stride must divide {reduction}; got patch_size={self.patch_size}, "
                f"stride={self.stride}."
            )

    # ------------------------------------------------------------------ descriptors
    def _descriptor_grid(self, image: np.ndarray) -> torch.Tensor:
        """``ny x nx x C`` descriptors of the patches on the ``stride`` grid of one image."""
        pixels = self._fit_patch(rgb_tensor(image))
        if pixels.shape != getattr(self, "_last_shape", pixels.shape):
            release_freed_memory()  # a new size: return what the previous size's buffers left behind
        self._last_shape = pixels.shape
        reduction = self.extractor_.reductions[0]
        cells = self.patch_size // reduction
        height, width = pixels.shape[1:]
        shifts = [(dy, dx) for dy in range(0, reduction, self.stride) for dx in range(0, reduction, self.stride)]
        padded = F.pad(pixels[None], (0, reduction - self.stride, 0, reduction - self.stride), mode="replicate")[0]
        crops = torch.stack([padded[:, dy : dy + height, dx : dx + width] for dy, dx in shifts])
        feature_map = self.extractor_(normalise(crops, *self._normalisation()).to(self.device_))[0].float()
        pooled = F.avg_pool2d(feature_map, cells, stride=1)  # S x C x h x w: patch at (dy + 32 i, dx + 32 j)
        rows = (height - self.patch_size) // self.stride + 1
        cols = (width - self.patch_size) // self.stride + 1
        grid = torch.empty(rows, cols, pooled.shape[1], device=pooled.device)
        per_cell = reduction // self.stride
        for index, (dy, dx) in enumerate(shifts):
            part = pooled[
                index,
                :,
                : len(range(dy // self.stride, rows, per_cell)),
                : len(range(dx // self.stride, cols, per_cell)),
            ]
            grid[dy // self.stride :: per_cell, dx // self.stride :: per_cell] = part.permute(1, 2, 0)
        return grid

    def _working_size(self, height: int, width: int) -> tuple[int, int]:
        """The image's size, or enlarged (aspect kept) so that its short side holds one patch."""
        short = min(height, width)
        if short >= self.patch_size:
            return height, width
        scale = self.patch_size / short
        return max(self.patch_size, round(height * scale)), max(self.patch_size, round(width * scale))

    def _fit_patch(self, pixels: torch.Tensor) -> torch.Tensor:
        """Enlarge a ``3 x H x W`` image whose short side is below ``patch_size``."""
        size = self._working_size(*pixels.shape[1:])
        if size == tuple(pixels.shape[1:]):
            return pixels
        return F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False)[0]

    # ------------------------------------------------------------------ fit
    def _fit(self, dataset: ImageDataset, progress: bool) -> None:
        self._build_extractor()
        generator = self._generator()
        per_image = -(-self.n_patches // len(dataset))
        descriptors = []
        with torch.inference_mode():
            for sample in tracked(dataset.samples, "descriptors", progress):
                grid = self._descriptor_grid(read_image(sample.image)).flatten(0, 1)
                chosen = torch.randperm(grid.shape[0], generator=generator)[:per_image]
                descriptors.append(grid[chosen.to(grid.device)])
        training = torch.cat(descriptors)[: self.n_patches]
        if training.shape[0] < self.n_centres:
            raise ConfigError(
                f"Only {training.shape[0]} training patches for {self.n_centres} dictionary words; "
                "add images or lower n_centres."
            )
        self.pca_ = PCA.fit(training, self.variance)
        projected = self.pca_.transform(training)
        centres = kmeans(projected, self.n_centres, generator)
        self.dictionary_ = projected[pairwise_squared_distances(projected, centres).argmin(dim=0)].contiguous()
        self.n_training_patches_ = int(training.shape[0])

    # ------------------------------------------------------------------ predict
    def _patch_scores(self, image: np.ndarray) -> torch.Tensor:
        """``ny x nx`` distances of every patch descriptor to its nearest dictionary word."""
        grid = self._descriptor_grid(image)
        projected = self.pca_.transform(grid.flatten(0, 1))
        distances = pairwise_squared_distances(projected, self.dictionary_).min(dim=1).values.sqrt()
        return distances.reshape(grid.shape[0], grid.shape[1])

    def _score_images(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        scores, maps = [], []
        for image in images:
            patch_scores = self._patch_scores(image)
            size = self._working_size(*image.shape[:2])
            maps.append(mean_of_covering_patches(patch_scores, self.patch_size // self.stride, self.stride, size))
            scores.append(patch_scores.max())
        return torch.stack(scores), maps

    def _probe_size(self) -> tuple[int, int]:
        return self.patch_size, self.patch_size  # images are scored at their own size: the smallest it takes

    def _export_refusal(self, graph_format: str) -> str | None:
        return (
            "it scores every image at its own size, one patch grid per image (a Python loop over images and "
            "crops), which a fixed graph does not hold; score it with the library, or export patchcore or padim"
        )

    # ------------------------------------------------------------------ state
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {"pca_mean": self.pca_.mean, "pca_components": self.pca_.components, "dictionary": self.dictionary_}

    def _state_meta(self) -> dict[str, Any]:
        return {**super()._state_meta(), "n_training_patches": self.n_training_patches_}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._restore_extractor(meta)
        channels = self.extractor_.channels[0]
        components = checked_tensor(tensors, "pca_components", (channels, None))
        mean = checked_tensor(tensors, "pca_mean", (channels,))
        dictionary = checked_tensor(tensors, "dictionary", (self.n_centres, components.shape[1]))
        self.pca_ = PCA(mean.to(self.device_), components.to(self.device_))
        self.dictionary_ = dictionary.to(self.device_)
        self.n_training_patches_ = meta["n_training_patches"]


register_detector(
    "feature_dictionary",
    FeatureDictionary,
    test_params={"layers": (3,), "patch_size": 32, "n_patches": 600, "n_centres": 5},
)
