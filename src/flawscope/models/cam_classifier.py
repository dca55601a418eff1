"""A supervised defect classifier with class activation maps.

Recipe (the project write-up in ``shared/seeds/001``; CAM: Zhou et al., "Learning Deep Features
for Discriminative Localization", CVPR 2016): an ImageNet CNN (VGG16 in the write-up; the
offline EfficientNet-Lite0 here, any timm model from a weights file) whose last convolutional
features are averaged globally and fed to a new 2-class dense layer (normal, anomaly); the last
three convolution layers and the dense layer are fine-tuned with cross-entropy weighted 1 : 3
(normal : anomaly), Adam 1e-4, up to 10 epochs, stopping early once the training accuracy
reaches 98 %, on randomly flipped images. The CAM of the anomaly class -- the last
convolutional features weighted by that class's dense weights -- is upsampled to the image and
normalised; the box is drawn around the largest connected region above ``cam_threshold`` of
its maximum.

Score: the softmax probability of "anomaly"; threshold 0.5 (the classifier's decision) unless
``calibrate`` sets another. Anomaly map: the normalised CAM times that probability, so a
confident "normal" image has a faint map.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from flawscope._validation import BOOLEAN, NONE, STRING, Check, Interval
from flawscope.data.datasets import DEFECTIVE, ImageDataset
from flawscope.data.splits import stratified_split
from flawscope.errors import WeightsError
from flawscope.features.backbones import backbone_cfg, create_classifier
from flawscope.maps import upsample_maps
from flawscope.metrics import mask_box
from flawscope.models.base import RUN_CONSTRAINTS, Detector, check_fingerprint
from flawscope.models.registry import SUPERVISED, register_detector
from flawscope.postprocess import Box
from flawscope.state import module_tensors, restore_module
from flawscope.training import EarlyStopping, TrainingLoop

POSITIVE_PAIR = Check(
    lambda v: (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v)
    ),
    "a pair of positive numbers",
)
VALIDATION_SHARE = 0.25  # of the labelled images given to fit: 60 / 20 of a 60 / 20 / 20 split


def trainable_convolutions(model: nn.Module, count: int) -> list[nn.Module]:
    """The last ``count`` convolution layers of ``model`` in definition order, each with the batch
    norm that follows it (if any): what fine-tuning unfreezes."""
    modules = [module for module in model.modules() if module is not model]
    chosen: list[nn.Module] = []
    conv_positions = [i for i, module in enumerate(modules) if isinstance(module, nn.Conv2d)][-count:]
    for position in conv_positions:
        chosen.append(modules[position])
        following = modules[position + 1] if position + 1 < len(modules) else None
        if isinstance(following, nn.BatchNorm2d):
            chosen.append(following)
    return chosen


class CamNetwork(nn.Module):
    """A timm CNN trunk, global average pooling and a 2-class dense layer."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        timm_model: Any = trunk  # a timm model: forward_features, num_features
        self.trunk = trunk
        self.head = nn.Linear(timm_model.num_features, 2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits N x 2, last convolutional features N x C x h x w)``."""
        timm_model: Any = self.trunk
        features = timm_model.forward_features(images)
        return self.head(features.mean(dim=(2, 3))), features

    def anomaly_cam(self, features: torch.Tensor) -> torch.Tensor:
        """``N x h x w``: the features weighted by the anomaly class's dense weights."""
        return torch.einsum("c,nchw->nhw", self.head.weight[1], features)


class CamClassifier(Detector):
    """Fine-tuned CNN classifier (normal / anomaly) with a class activation map and a defect box.

    Learns from labelled good AND defective images (``fit`` holds out a stratified quarter of
    them, seeded, to keep the best epoch).

    Parameters
    ----------
    backbone : str
        timm architecture with ``forward_features`` (``tf_efficientnet_lite0`` has offline
        weights; the write-up used VGG16, ``vgg16`` with a weights file).
    weights : str or None
        ``None`` for the offline EfficientNet-Lite weights, a weights file, or ``"hub"``.
    image_size : int
        Images are resized to ``image_size x image_size`` (224 as in the write-up).
    trainable_layers : int
        Convolution layers fine-tuned, counted from the top (the write-up: 3).
    class_weights : sequence of two floats
        Cross-entropy weights of normal and anomaly (the write-up: 1 and 3).
    learning_rate : float
        Adam (the write-up: 1e-4).
    max_epochs : int
        At most this many passes over the training images (the write-up: 10).
    stop_accuracy : float
        Stop once an epoch's training accuracy reaches this (the write-up: 0.98).
    augment : bool
        Random horizontal and vertical flips of the training images.
    cam_threshold : float
        A pixel is in the defect region when its CAM is at least this share of the image's
        largest CAM value.
    batch_size : int
        Images per step and per scoring pass.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the validation hold-out, the new dense layer, the order and the flips.
    """

    _parameter_constraints = {
        "backbone": [STRING],
        "weights": [NONE, STRING],
        "image_size": [Interval(int, 32, 4096)],
        "trainable_layers": [Interval(int, 0, None)],
        "class_weights": [POSITIVE_PAIR],
        "learning_rate": [Interval(float, 0.0, None, "neither")],
        "max_epochs": [Interval(int, 1, None)],
        "stop_accuracy": [Interval(float, 0.0, 1.0, "right")],
        "augment": [BOOLEAN],
        "cam_threshold": [Interval(float, 0.0, 1.0, "right")],
        **RUN_CONSTRAINTS,
    }

    def __init__(
        self,
        *,
        backbone: str = "tf_efficientnet_lite0",
        weights: str | None = None,
        image_size: int = 224,
        trainable_layers: int = 3,
        class_weights: tuple[float, float] = (1.0, 3.0),
        learning_rate: float = 1e-4,
        max_epochs: int = 10,
        stop_accuracy: float = 0.98,
        augment: bool = True,
        cam_threshold: float = 0.5,
        batch_size: int = 16,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.trainable_layers = trainable_layers
        self.class_weights = class_weights
        self.learning_rate = learning_rate
        self.max_epochs = max_epochs
        self.stop_accuracy = stop_accuracy
        self.augment = augment
        self.cam_threshold = cam_threshold
        self.batch_size = batch_size
        self.device = device
        self.seed = seed

    def _normalisation(self) -> tuple[Sequence[float], Sequence[float]]:
        cfg = backbone_cfg(self.backbone)
        return cfg.mean, cfg.std

    def _build_network(self) -> None:
        trunk, self.fingerprint_ = create_classifier(self.backbone, self.weights)
        if not hasattr(trunk, "forward_features") or not hasattr(trunk, "num_features"):
            raise WeightsError(f"Backbone {self.backbone!r} has no forward_features / num_features; pick a timm CNN.")
        trunk.requires_grad_(False)
        self.trainable_ = trainable_convolutions(trunk, self.trainable_layers)
        for module in self.trainable_:
            module.requires_grad_(True)
        self.network_ = CamNetwork(trunk).to(self.device_)

    # ------------------------------------------------------------------ fit
    def _fit(self, dataset: ImageDataset, progress: bool) -> None:
        train, validation = stratified_split(dataset, (1 - VALIDATION_SHARE, VALIDATION_SHARE), self.seed)
        with self._seeded():  # the new dense layer's initial weights
            self._build_network()
        images, labels = self._tensors(train, progress)
        validation_images, validation_labels = self._tensors(validation, progress)
        self.history_ = self._train(images, labels, validation_images, validation_labels, progress)
        self.network_.eval()
        self.threshold_ = 0.5
        self.pixel_threshold_ = self.cam_threshold
        self.calibration_ = {
            "rule": "argmax",
            "n_images": len(validation),
            "n_defective": int((validation_labels == 1).sum()),
        }

    def _tensors(self, dataset: ImageDataset, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.cat(list(self._training_batches(dataset, "reading", progress)))
        return images, torch.as_tensor(dataset.labels == DEFECTIVE, dtype=torch.long, device=self.device_)

    def _train(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        validation_images: torch.Tensor,
        validation_labels: torch.Tensor,
        progress: bool,
    ) -> list[dict[str, float]]:
        """Fine-tune; keep the weights of the epoch with the best validation balanced accuracy (ties: the
        later, longer-trained epoch); stop once an epoch's training accuracy reaches ``stop_accuracy``."""
        class_weights = torch.tensor(self.class_weights, dtype=torch.float32, device=self.device_)
        epoch_counts = {"correct": 0, "seen": 0}
        train_accuracy: list[float] = []

        def epoch_batches(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            epoch_counts.update(correct=0, seen=0)
            order = torch.randperm(images.shape[0], generator=generator).to(self.device_)
            for start in range(0, images.shape[0], self.batch_size):
                chosen = order[start : start + self.batch_size]
                batch = self._flipped(images[chosen], generator) if self.augment else images[chosen]
                yield batch, labels[chosen]

        def step_loss(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            inputs, targets = batch
            logits, _ = self.network_(inputs)
            epoch_counts["correct"] += int((logits.argmax(dim=1) == targets).sum())
            epoch_counts["seen"] += targets.numel()
            return F.cross_entropy(logits, targets, weight=class_weights)

        def accurate_enough() -> bool:
            train_accuracy.append(epoch_counts["correct"] / max(epoch_counts["seen"], 1))
            return train_accuracy[-1] >= self.stop_accuracy

        early_stopping = EarlyStopping(
            partial(self._balanced_accuracy, validation_images, validation_labels),
            self.network_,
            higher_is_better=True,
            ties_improve=True,
        )
        optimiser = torch.optim.Adam([p for p in self.network_.parameters() if p.requires_grad], lr=self.learning_rate)
        loop = TrainingLoop(
            [self.network_.head],
            optimiser,
            epoch_batches,
            step_loss,
            early_stopping=early_stopping,
            stop_after_epoch=accurate_enough,
        )
        steps = -(-images.shape[0] // self.batch_size)
        history = loop.run(
            epochs=self.max_epochs,
            steps_per_epoch=steps,
            generator=self._generator(),
            progress=progress,
            description="fine-tuning",
        )
        return [
            {"epoch": epoch, "loss": loss, "train_accuracy": accuracy, "validation_balanced_accuracy": validation}
            for epoch, loss, accuracy, validation in zip(
                range(1, len(history.epoch_losses) + 1), history.epoch_losses, train_accuracy, history.validation
            )
        ]

    @staticmethod
    def _flipped(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Each image flipped left-right and/or up-down with probability 1/2 each."""
        flips = torch.rand(batch.shape[0], 2, generator=generator) < 0.5
        out = batch.clone()
        for index, (horizontal, vertical) in enumerate(flips.tolist()):
            dims = [d for d, flip in ((-1, horizontal), (-2, vertical)) if flip]
            if dims:
                out[index] = batch[index].flip(dims)
        return out

    def _balanced_accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        with torch.inference_mode():
            predicted = torch.cat([self.network_(chunk)[0].argmax(dim=1) for chunk in images.split(self.batch_size)])
        recalls = [
            float((predicted[labels == label] == label).float().mean()) for label in (0, 1) if (labels == label).any()
        ]
        return float(np.mean(recalls))

    # ------------------------------------------------------------------ predict
    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.network_(batch)
        probability = logits.softmax(dim=1)[:, 1]
        cam = self.network_.anomaly_cam(features).clamp_min(0)
        cam = cam / cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
        maps = upsample_maps(cam, (batch.shape[2], batch.shape[3]))
        return probability, maps * probability.view(-1, 1, 1)

    def decide(
        self, score: float, anomaly_map: np.ndarray, opening: int | None = None
    ) -> tuple[bool, np.ndarray, list[Box]]:
        """NOT OK when the anomaly probability passes the threshold; then the defect region is the
        largest connected region of the map at or above ``cam_threshold`` of its maximum, boxed."""
        threshold, _ = self._thresholds()
        defective = bool(score > threshold)
        mask = np.zeros(anomaly_map.shape, dtype=bool)
        if not defective or anomaly_map.max() <= 0:
            return defective, mask, []
        regions, count = ndimage.label(anomaly_map >= self.cam_threshold * anomaly_map.max())
        sizes = ndimage.sum_labels(np.ones_like(regions), regions, index=np.arange(1, count + 1))
        mask = regions == 1 + int(np.argmax(sizes))
        box = mask_box(mask)
        assert box is not None  # the region is not empty
        return defective, mask, [(*box, float(anomaly_map[mask].max()))]

    # ------------------------------------------------------------------ state
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return module_tensors("network", self.network_)

    def _state_meta(self) -> dict[str, Any]:
        return {"backbone_fingerprint": self.fingerprint_, "history": self.history_}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._build_network()
        check_fingerprint(type(self).__name__, meta["backbone_fingerprint"], self.fingerprint_)
        restore_module(self.network_, tensors, "network").eval()
        self.history_ = list(meta["history"])


register_detector(
    "cam_classifier",
    CamClassifier,
    test_params={"image_size": 64, "max_epochs": 2, "learning_rate": 1e-3},
    capabilities=[SUPERVISED],
)
