"""EfficientAD (Batzner, Heckler & Koenig, "EfficientAD: Accurate Visual Anomaly Detection at
Millisecond-Level Latencies", WACV 2024).

Recipe (Algorithm 1 of the paper): a frozen teacher PDN distilled from a pretrained network
(:mod:`flawscope.models.efficientad.pdn`), its outputs standardised per channel over the training images;
a student PDN with twice the teacher's channels and an autoencoder, trained together for 70,000
steps of one image (Adam 1e-4, weight decay 1e-5, learning rate x 0.1 after 95 % of the steps):

* the student's first half imitates the teacher, on the hardest 0.1 % of the squared
  differences only (``D >= quantile(D, 0.999)``), plus a penalty on the student's outputs for
  an unrelated image (ImageNet in the paper; seeded dead-leaves images here, or a folder);
* the autoencoder predicts the teacher's output from a 64-d code of an image changed in
  brightness, contrast or saturation (factor U(0.8, 1.2)), and the student's second half
  predicts the autoencoder's output.

The local map is the squared teacher-student difference, the global (logical) map the squared
autoencoder-student difference, each averaged over channels and normalised so that its 0.9
and 0.995 quantiles on held-out good images map to 0 and 0.1; the anomaly map is their mean,
padded by 4 cells to cover the image border and upsampled; image score = its maximum.

``precision="int8"`` (not in the paper) trains in float32, then quantizes the three networks
post-training (:mod:`flawscope.models.efficientad.quantize`) and scores with them on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from flawscope._progress import tracked
from flawscope._validation import NONE, STRING, Interval, Options
from flawscope.data.datasets import ImageDataset, as_dataset, list_images
from flawscope.data.io import read_image
from flawscope.data.splits import holdout_split
from flawscope.data.synthetic import dead_leaves
from flawscope.data.transforms import luma, normalise, resize_image
from flawscope.devices import resolve_device
from flawscope.errors import ConfigError, DataError, ModelFileError
from flawscope.maps import upsample_maps
from flawscope.models.base import RUN_CONSTRAINTS, Detector, check_fingerprint
from flawscope.models.efficientad.pdn import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PDN_SIZES,
    PRECISIONS,
    EfficientADAutoencoder,
    Teacher,
    load_teacher,
    patch_description_network,
)
from flawscope.models.efficientad.quantize import (
    INT8_SCHEME,
    calibrate_int8,
    convert_int8,
    observer_state,
    qdq_network,
    restore_observed,
)
from flawscope.models.registry import QUANTIZABLE, register_detector
from flawscope.state import checked_tensor, module_tensors, restore_module, tensors_under
from flawscope.training import RECIPE_CONSTRAINTS, TrainingLoop, announce_schedule

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

HARD_QUANTILE = 0.999
MAP_QUANTILES = (0.9, 0.995)
MAP_BORDER = 4  # grid cells padded around the map: the image border no PDN patch is centred on
INT8_CALIBRATION_IMAGES = 32  # training images whose activations set the int8 ranges
# parity of an int8 export (score relative, map absolute): torch and onnxruntime compute the same integers (see
# quantize.py) but for the ties of the autoencoder's bilinear upsampling, which each engine breaks its own way (see
# flawscope.export for float32's 1e-4 / 1e-3); on a CPU with AVX2 only a 1,000-step model on ELPV cells measured
# 0.26 % and 0.0047 (benchmarks/results/export_efficientad_avx2.json), the 40-step test model 0.04 % and 0.0087
INT8_PARITY = (1e-2, 2e-2)


def hard_feature_loss(distance: torch.Tensor, quantile: float = HARD_QUANTILE) -> torch.Tensor:
    """Mean of the squared differences at or above their ``quantile`` (the paper's ``L_hard``)."""
    flat = distance.flatten()
    return flat[flat >= torch.quantile(flat, quantile)].mean()


def adjust_colour(image: torch.Tensor, kind: int, factor: float) -> torch.Tensor:
    """Brightness (0), contrast (1) or saturation (2) of a ``3 x H x W`` image in [0, 1] changed by
    ``factor``, as torchvision's ``adjust_*`` functions define them."""
    grey = luma(image)
    if kind == 0:
        changed = image * factor
    elif kind == 1:
        changed = grey.mean() + factor * (image - grey.mean())
    else:
        changed = grey + factor * (image - grey)
    return changed.clamp(0.0, 1.0)


class EfficientAD(Detector):
    """EfficientAD: student-teacher PDNs plus an autoencoder for logical anomalies.

    Parameters
    ----------
    size : {"small", "medium"}
        EfficientAD-S (default) or -M: the PDN of the student; the teacher file must be of the
        same size.
    teacher : str or None
        A teacher file from ``flawscope distill-teacher``; ``None`` = the PDN-S shipped with
        flawscope (distilled from EfficientNet-Lite0 on dead-leaves images).
    image_size : int
        Images are resized to ``image_size x image_size`` (paper: 256; a multiple of 4, >= 128).
    recipe : {"fast", "long", "paper"}
        ``"paper"``: 70,000 steps; ``"fast"`` (default): 1,000 steps, which fits a CPU; ``"long"``: 2,500
        steps, about 50 minutes on the 2-core CPU in float32 (twice as many would fit in ``"bfloat16"``).
    steps : int or None
        Training steps (one image each); ``None`` = the recipe's.
    learning_rate, weight_decay : float
        Adam's (paper: 1e-4, 1e-5); the rate drops tenfold after 95 % of the steps.
    penalty_images : str or None
        The unrelated images of the student's penalty: ``"dead_leaves"`` (default, generated),
        a folder of images, or ``None`` for no penalty.
    validation_fraction : float
        Share of the training images held out (seeded) for the map quantiles (paper: 10 %).
    precision : {"float32", "bfloat16", "int8"}
        ``"bfloat16"`` trains and scores under bfloat16 autocast: about 2x faster on CPUs
        with AVX512-BF16 and on GPUs; scores then differ slightly from float32. ``"int8"``
        trains in float32, then quantizes teacher, student and autoencoder (post-training,
        static; activation ranges from up to 32 training images) and scores with them: about
        3.5x faster than float32 on CPUs with VNNI (33 vs 118 ms at 256 px); CPU only.
    batch_size : int
        Images per scoring pass (training uses one image a step, as the paper).
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the initial weights, the image order, augmentation, penalty images, dropout and
        the validation split.
    """

    # "long": 1.13 s a float32 step on the 2-core CPU (training_speed.json), 2,500 steps = 47 min
    recipes: ClassVar[dict[str, int]] = {"fast": 1_000, "long": 2_500, "paper": 70_000}
    _parameter_constraints = {
        "size": [Options(PDN_SIZES)],
        "teacher": [NONE, STRING],
        "image_size": [Interval(int, 128, 4096)],
        **RECIPE_CONSTRAINTS,
        "steps": [NONE, Interval(int, 1, None)],
        "learning_rate": [Interval(float, 0.0, None, "neither")],
        "weight_decay": [Interval(float, 0.0, None)],
        "penalty_images": [NONE, STRING],
        "validation_fraction": [Interval(float, 0.0, 1.0, "neither")],
        "precision": [Options((*PRECISIONS, "int8"))],
        **RUN_CONSTRAINTS,
    }

    def __init__(
        self,
        *,
        size: str = "small",
        teacher: str | None = None,
        image_size: int = 256,
        recipe: str = "fast",
        steps: int | None = None,
        learning_rate: float = 1e-4,
        weight_decay: float = 1e-5,
        penalty_images: str | None = "dead_leaves",
        validation_fraction: float = 0.1,
        precision: str = "float32",
        batch_size: int = 8,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.size = size
        self.teacher = teacher
        self.image_size = image_size
        self.recipe = recipe
        self.steps = steps
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.penalty_images = penalty_images
        self.validation_fraction = validation_fraction
        self.precision = precision
        self.batch_size = batch_size
        self.device = device
        self.seed = seed

    def _normalisation(self) -> tuple[Sequence[float], Sequence[float]]:
        return IMAGENET_MEAN, IMAGENET_STD

    def _validate(self) -> None:
        super()._validate()
        if self.precision == "int8":
            _require_cpu_for_int8(resolve_device(self.device), "Use device='cpu', or precision='bfloat16' on a GPU.")

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device_.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")

    def _schedule(self) -> int:
        return self.steps or self.recipes[self.recipe]

    # ------------------------------------------------------------------ fit
    def _fit(self, dataset: ImageDataset, progress: bool) -> None:
        if self.image_size % 4:
            raise ConfigError(f"image_size must be a multiple of 4 (the PDN's stride). Got {self.image_size} instead.")
        self._load_teacher()
        train, validation = self._split(dataset)
        pixels = self._pixels(train, progress)
        self._fit_teacher_statistics(pixels)
        steps = self._schedule()
        paper = self.recipes["paper"]
        announce_schedule(self.name, f"{steps:,} steps", f"{paper:,} steps", paper / steps)
        # the images, augmentations and penalty images are drawn from a numpy Generator: the
        # dead-leaves images are made with numpy
        rng = np.random.default_rng(self.seed)
        penalty = self._penalty_stream(rng)
        with self._seeded():  # initial weights and dropout
            channels = self.teacher_.info.out_channels
            self.student_ = self._placed(patch_description_network(self.size, 2 * channels))
            self.autoencoder_ = self._placed(EfficientADAutoencoder(channels, self.image_size))
            self.loss_history_ = self._train(pixels, penalty, rng, steps, progress)
        if self.precision == "int8":
            self._quantize(self._normalise(pixels[:INT8_CALIBRATION_IMAGES]))
        self._fit_map_quantiles(validation, progress)

    def _split(self, dataset: ImageDataset) -> tuple[ImageDataset, ImageDataset]:
        """(training images, held-out images for the map quantiles), seeded."""
        if len(dataset) < 2:
            raise DataError(
                f"EfficientAD needs at least 2 good images (it holds {self.validation_fraction:.0%} out "
                f"for the map quantiles); {dataset!r} has {len(dataset)}."
            )
        return holdout_split(dataset, self.validation_fraction, self.seed)

    def quantize(self, images: ImageDataset | Sequence | str, *, progress: bool = True) -> EfficientAD:
        """A new EfficientAD with ``precision="int8"`` that scores with int8 copies of this one's networks,
        without training again; this model is left as it is.

        ``images`` are the good images this model was fitted on: the same seeded split gives the
        activation ranges (the first 32 training images) and the map quantiles (the held-out
        images), so the result equals a ``precision="int8"`` fit of the same seed and images.
        CPU only. The OK / NOT OK threshold would not fit the new scores: the new model is not
        calibrated.
        """
        self._check_fitted()
        if self.precision != "float32":
            raise ConfigError(
                f"quantize turns a float32 EfficientAD into int8; this one has precision={self.precision!r}."
            )
        _require_cpu_for_int8(self.device_, "Load it with device='cpu' first.")
        train, validation = self._split(as_dataset(images, split="train"))
        quantized = type(self).from_params({**self.get_params(), "precision": "int8"})
        quantized._set_learned_state(self._learned_state())  # the float networks, shared: both only score
        quantized._forget_calibration()
        calibration = train.subset(range(min(INT8_CALIBRATION_IMAGES, len(train))), "int8 calibration")
        quantized._quantize(quantized._normalise(quantized._pixels(calibration, progress)))
        quantized._fit_map_quantiles(validation, progress)
        return quantized

    def _load_teacher(self) -> None:
        teacher = load_teacher(self.teacher)
        if teacher.info.size != self.size:
            raise ConfigError(
                f"The teacher {self.teacher or '(default)'} is a PDN-{teacher.info.size}; size={self.size!r} "
                f"needs a PDN-{self.size} teacher ('flawscope distill-teacher --size {self.size}')."
            )
        teacher.network.to(self.device_).to(memory_format=torch.channels_last)
        self.teacher_: Teacher = teacher

    def _placed(self, network: ModuleT) -> ModuleT:
        """``network`` on the device, channels-last like the teacher (1.27x the training steps per second of
        NCHW on the 2-core CPU, ``benchmarks/results/training_speed.json``)."""
        return network.to(self.device_).to(memory_format=torch.channels_last)

    def _pixels(self, dataset: ImageDataset, progress: bool) -> torch.Tensor:
        """The images resized to ``N x 3 x S x S`` in [0, 1] (not normalised: augmentation works on pixels)."""
        samples = tracked(dataset.samples, "reading", progress)
        return torch.stack([resize_image(read_image(sample.image), self.image_size) for sample in samples]).to(
            self.device_
        )

    def _teacher_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Raw teacher output of normalised ``inputs``, float32."""
        with self._autocast():
            return self.teacher_.network(inputs.contiguous(memory_format=torch.channels_last)).float()

    def _fit_teacher_statistics(self, pixels: torch.Tensor) -> None:
        """Per-channel mean and deviation of the teacher's outputs over the training images."""
        channels = self.teacher_.info.out_channels
        total = torch.zeros(channels, dtype=torch.float64, device=self.device_)
        total_sq = torch.zeros_like(total)
        count = 0
        with torch.inference_mode():
            for chunk in pixels.split(self.batch_size):
                features = self._teacher_features(self._normalise(chunk)).double()
                total = total + features.sum(dim=(0, 2, 3))
                total_sq = total_sq + features.square().sum(dim=(0, 2, 3))
                count += features.shape[0] * features.shape[2] * features.shape[3]
        mean = total / count
        self.teacher_mean_ = mean.float().view(1, -1, 1, 1)
        self.teacher_std_ = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt().float().view(1, -1, 1, 1)

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalise(pixels, IMAGENET_MEAN, IMAGENET_STD)

    def _teacher(self, inputs: torch.Tensor) -> torch.Tensor:
        """Standardised teacher output of normalised ``inputs``."""
        return self._standardise(self._teacher_features(inputs))

    def _standardise(self, teacher_output: torch.Tensor) -> torch.Tensor:
        """Teacher output with the per-channel mean and deviation over the training images removed."""
        return (teacher_output - self.teacher_mean_) / self.teacher_std_

    def _penalty_stream(self, generator: np.random.Generator) -> Iterator[torch.Tensor] | None:
        """Endless ``1 x 3 x S x S`` normalised penalty images, or None without a penalty."""
        if self.penalty_images is None:
            return None
        if self.penalty_images == "dead_leaves":

            def draw() -> torch.Tensor:
                return torch.from_numpy(dead_leaves(generator, self.image_size)).permute(2, 0, 1)
        else:
            folder = Path(self.penalty_images)
            paths = list_images(folder) if folder.is_dir() else []
            if not paths:
                raise DataError(
                    f"penalty_images={self.penalty_images!r} is neither 'dead_leaves' nor a folder with images."
                )

            def draw() -> torch.Tensor:
                return resize_image(read_image(paths[int(generator.integers(len(paths)))]), self.image_size)

        def stream() -> Iterator[torch.Tensor]:
            while True:
                yield self._normalise(draw()[None].float().to(self.device_))

        return stream()

    def _train(
        self,
        pixels: torch.Tensor,
        penalty: Iterator[torch.Tensor] | None,
        rng: np.random.Generator,
        steps: int,
        progress: bool,
    ) -> list[float]:
        """Algorithm 1 of the paper, one image a step; returns the total loss of every step."""

        def epoch_batches(_: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
            for _step in range(steps):
                image = pixels[int(rng.integers(pixels.shape[0]))]
                augmented = adjust_colour(image, int(rng.integers(3)), float(rng.uniform(0.8, 1.2)))
                yield (
                    self._normalise(image[None]),
                    self._normalise(augmented[None]),
                    None if penalty is None else next(penalty),
                )

        parameters = list(self.student_.parameters()) + list(self.autoencoder_.parameters())
        optimiser = torch.optim.Adam(parameters, lr=self.learning_rate, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=max(1, int(0.95 * steps)), gamma=0.1)
        loop = TrainingLoop(
            [self.student_, self.autoencoder_],
            optimiser,
            epoch_batches,
            lambda batch: self._step_loss(*batch),
            scheduler=scheduler,
        )
        history = loop.run(epochs=1, steps_per_epoch=steps, generator=self._generator(), progress=progress)
        return history.step_losses

    def _step_loss(
        self, image: torch.Tensor, augmented: torch.Tensor, penalty_image: torch.Tensor | None
    ) -> torch.Tensor:
        """``L_hard + L_penalty + L_AE + L_STAE`` for one training image (Algorithm 1)."""
        channels = self.teacher_.info.out_channels
        with torch.no_grad():
            targets = self._teacher(torch.cat([image, augmented]))
        inputs = torch.cat([image, augmented] + ([] if penalty_image is None else [penalty_image]))
        with self._autocast():
            student = self.student_(inputs).float()
            reconstruction = self.autoencoder_(augmented).float()
        loss = hard_feature_loss((targets[0] - student[0, :channels]).square())
        if penalty_image is not None:
            loss = loss + student[2, :channels].square().mean()
        loss = loss + (targets[1] - reconstruction[0]).square().mean()
        return loss + (reconstruction[0] - student[1, channels:]).square().mean()

    def _fit_map_quantiles(self, validation: ImageDataset, progress: bool) -> None:
        """The 0.9 and 0.995 quantiles of both raw maps over the held-out good images."""
        local_maps, global_maps = [], []
        with torch.inference_mode():
            for batch in self._training_batches(validation, "validation maps", progress):
                local_map, global_map = self._raw_maps(batch)
                local_maps.append(local_map.flatten())
                global_maps.append(global_map.flatten())
        levels = torch.tensor(MAP_QUANTILES, device=self.device_)
        self.local_quantiles_ = torch.quantile(_at_most(torch.cat(local_maps), self.seed), levels)
        self.global_quantiles_ = torch.quantile(_at_most(torch.cat(global_maps), self.seed), levels)

    def _float_networks(self) -> dict[str, torch.nn.Module]:
        """Teacher, student and autoencoder as trained (float32)."""
        return {"teacher": self.teacher_.network, "student": self.student_, "autoencoder": self.autoencoder_}

    def _quantize(self, calibration: torch.Tensor) -> None:
        """int8 copies of the three networks, their activation ranges observed on ``calibration``."""
        self._set_int8(
            {
                name: calibrate_int8(network, calibration, self.batch_size)
                for name, network in self._float_networks().items()
            }
        )

    def _set_int8(self, observed: dict[str, torch.fx.GraphModule]) -> None:
        self.int8_calibration_ = {name: observer_state(network) for name, network in observed.items()}
        self.int8_networks_: dict[str, torch.nn.Module] = {
            name: convert_int8(network) for name, network in observed.items()
        }

    # ------------------------------------------------------------------ predict
    def _raw_maps(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(local, global)`` maps ``N x h x w`` of normalised images, before quantile normalisation."""
        channels = self.teacher_.info.out_channels
        networks = self.int8_networks_ if self.precision == "int8" else self._float_networks()
        with self._autocast():
            inputs = batch.contiguous(memory_format=torch.channels_last)
            targets = self._standardise(networks["teacher"](inputs).float())
            student = networks["student"](inputs).float()
            reconstruction = networks["autoencoder"](inputs).float()
        local_map = (targets - student[:, :channels]).square().mean(dim=1)
        global_map = (reconstruction - student[:, channels:]).square().mean(dim=1)
        return local_map, global_map

    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local_map, global_map = self._raw_maps(batch)
        combined = 0.5 * _rescale(local_map, self.local_quantiles_) + 0.5 * _rescale(global_map, self.global_quantiles_)
        padded = F.pad(combined, (MAP_BORDER,) * 4)
        return padded.flatten(1).max(dim=1).values, upsample_maps(padded, (batch.shape[2], batch.shape[3]))

    # ------------------------------------------------------------------ state
    @contextlib.contextmanager
    def _export_context(self) -> Iterator[None]:
        """An int8 model is traced through the QDQ form of its networks (torch.export cannot trace FX quantized
        modules): the same int8 weights and activation parameters, run by onnxruntime with int8 kernels."""
        if self.precision != "int8":
            yield
            return
        int8_networks = self.int8_networks_
        self.int8_networks_ = {name: qdq_network(network) for name, network in int8_networks.items()}
        try:
            yield
        finally:
            self.int8_networks_ = int8_networks

    def _parity_tolerance(self) -> tuple[float, float] | None:
        return INT8_PARITY if self.precision == "int8" else None

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = module_tensors("student", self.student_) | module_tensors("autoencoder", self.autoencoder_)
        if self.precision == "int8":
            tensors |= {
                f"int8.{name}.{key}": value
                for name, state in self.int8_calibration_.items()
                for key, value in state.items()
            }
        return {
            **tensors,
            "teacher_mean": self.teacher_mean_,
            "teacher_std": self.teacher_std_,
            "local_quantiles": self.local_quantiles_,
            "global_quantiles": self.global_quantiles_,
        }

    def _state_meta(self) -> dict[str, Any]:
        meta = {"teacher_fingerprint": self.teacher_.fingerprint, "loss_history": self.loss_history_}
        return meta | {"int8_scheme": INT8_SCHEME} if self.precision == "int8" else meta

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._load_teacher()
        check_fingerprint(type(self).__name__, meta["teacher_fingerprint"], self.teacher_.fingerprint)
        channels = self.teacher_.info.out_channels
        student = patch_description_network(self.size, 2 * channels)
        self.student_ = self._placed(restore_module(student, tensors, "student")).eval()
        autoencoder = EfficientADAutoencoder(channels, self.image_size)
        self.autoencoder_ = self._placed(restore_module(autoencoder, tensors, "autoencoder")).eval()
        self.teacher_mean_ = checked_tensor(tensors, "teacher_mean", (1, channels, 1, 1)).to(self.device_)
        self.teacher_std_ = checked_tensor(tensors, "teacher_std", (1, channels, 1, 1)).to(self.device_)
        self.local_quantiles_ = checked_tensor(tensors, "local_quantiles", (2,)).to(self.device_)
        self.global_quantiles_ = checked_tensor(tensors, "global_quantiles", (2,)).to(self.device_)
        if self.precision == "int8":
            _check_int8_scheme(meta.get("int8_scheme"))
            example = torch.zeros(1, 3, self.image_size, self.image_size)
            self._set_int8(
                {
                    name: restore_observed(network, example, tensors_under(tensors, f"int8.{name}"))
                    for name, network in self._float_networks().items()
                }
            )
        self.loss_history_ = list(meta["loss_history"])


def _check_int8_scheme(saved: str | None) -> None:
    """A saved int8 model rebuilds its networks from its calibration: only with the scheme that made them."""
    if saved != INT8_SCHEME:
        raise ModelFileError(
            f"its int8 networks were made with the scheme {saved or '8-bit weights, float bias'!r}, this flawscope "
            f"makes {INT8_SCHEME!r} (the same arithmetic on every x86 CPU and in an export); fit it again with "
            "precision='int8', or quantize a float32 model of the same fit."
        )


def _require_cpu_for_int8(device: torch.device, remedy: str) -> None:
    if device.type != "cpu":
        raise ConfigError(f"precision='int8' runs on the CPU only; this EfficientAD would run on {device}. {remedy}")


def _rescale(raw_map: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Map the quantiles ``(q_a, q_b)`` to 0 and 0.1 (the paper's map normalisation)."""
    return 0.1 * (raw_map - quantiles[0]) / (quantiles[1] - quantiles[0]).clamp_min(1e-12)


def _at_most(values: torch.Tensor, seed: int, limit: int = 2**24) -> torch.Tensor:
    """``values``, or a seeded random ``limit`` of them (``torch.quantile`` takes at most 2^24)."""
    if values.numel() <= limit:
        return values
    generator = torch.Generator().manual_seed(seed)
    return values[torch.randperm(values.numel(), generator=generator)[:limit].to(values.device)]


register_detector("efficientad", EfficientAD, test_params={"image_size": 128, "steps": 4}, capabilities=[QUANTIZABLE])
