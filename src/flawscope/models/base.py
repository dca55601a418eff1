"""The detector contract shared by every method: parameters, fit, calibrate, predict, save.

A method subclasses :class:`Detector`, declares ``_parameter_constraints``, and implements
small hooks:

* ``_fit(dataset)`` -- learn state from good images (attributes ending in ``_``);
* ``_normalisation()`` -- the ``(mean, std)`` its input tensors are normalised with;
* ``_score_batch(batch)`` -- ``N x 3 x S x S`` tensor -> ``(scores (N,), maps (N, S, S))``
  (or ``_score_images(images)`` for a method that scores each image at its own resolution);
* ``_state_tensors()`` / ``_state_meta()`` / ``_restore(tensors, meta)`` -- what
  :mod:`flawscope.serialization` saves and how it is brought back.

Reading images, batching, resizing maps back to each image's size, thresholds, masks and boxes
live here once and are never re-implemented by a method.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from flawscope._progress import progress_bar
from flawscope._validation import NONE, STRING, Interval, int_sequence, validate_params
from flawscope.data.datasets import DEFECTIVE, ImageDataset, Sample, as_dataset
from flawscope.data.io import read_image
from flawscope.data.transforms import to_model_input
from flawscope.errors import ConfigError, DataError, FlawscopeError, NotFittedError, WeightsError
from flawscope.features.extractor import FeatureExtractor
from flawscope.postprocess import Box, boxes_from_mask, segment, threshold_from_scores, upsample_maps

_REGISTRY: dict[str, type[Detector]] = {}

# Parameter constraints shared by methods: every method has the run parameters, every method on
# a pretrained backbone the backbone ones. A method's table is ``{**BACKBONE_CONSTRAINTS, ...,
# **RUN_CONSTRAINTS}``.
RUN_CONSTRAINTS = {"batch_size": [Interval(int, 1, None)], "device": [STRING], "seed": [Interval(int, 0, None)]}
BACKBONE_CONSTRAINTS = {"backbone": [STRING], "layers": [int_sequence(0)], "weights": [NONE, STRING]}


def register_detector(name: str):
    """Class decorator: make a detector reachable as ``fs.create(name)``."""

    def decorate(cls: type[Detector]) -> type[Detector]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"A detector named {name!r} is registered already ({_REGISTRY[name].__name__}).")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_models(pattern: str = "*") -> list[str]:
    """Registered detector names matching the fnmatch ``pattern``, sorted."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def detector_class(name: str) -> type[Detector]:
    """The class registered as ``name``; unknown names list what exists and the closest match."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown model {name!r}.{hint} Registered models: {', '.join(list_models())}.")
    return _REGISTRY[name]


def create(name: str, **params: Any) -> Detector:
    """Create an unfitted detector by registry name, e.g. ``create("patchcore", coreset_ratio=0.1)``."""
    cls = detector_class(name)
    known = set(cls._param_names())
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no parameter(s) {unknown}. Its parameters: {sorted(known)}.")
    return cls(**params)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was asked for but torch sees no CUDA device; use device='auto' or 'cpu'.")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"Unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'.") from error


@dataclass(frozen=True)
class Prediction:
    """What ``predict`` returns for N images.

    ``anomaly_maps`` hold one float32 ``H_i x W_i`` map per image at that image's own size.
    ``labels`` (True = NOT OK), ``masks`` and ``boxes`` (``(x0, y0, x1, y1, score)``, x1/y1
    exclusive) need a calibrated detector and are None otherwise. ``errors`` maps the name of
    every input that could not be read to the reason (only with ``on_error="skip"``).
    """

    names: list[str]
    scores: np.ndarray
    anomaly_maps: list[np.ndarray]
    labels: np.ndarray | None = None
    masks: list[np.ndarray] | None = None
    boxes: list[list[Box]] | None = None
    threshold: float | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = len(self.names)
        sized = {
            "scores": self.scores,
            "anomaly_maps": self.anomaly_maps,
            "labels": self.labels,
            "masks": self.masks,
            "boxes": self.boxes,
        }
        for what, value in sized.items():
            if value is not None and len(value) != count:
                raise ValueError(f"Prediction has {count} names but {len(value)} {what}.")

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class ScoredImage:
    """One image's result from :meth:`Detector.iter_predict` (``error`` set when it could not be read).

    ``image`` holds the pixels as read (float ``H x W x C``), so a consumer that draws overlays
    does not decode the file a second time.
    """

    sample: Sample
    score: float = float("nan")
    anomaly_map: np.ndarray | None = None
    error: str | None = None
    image: np.ndarray | None = None


class Detector:
    """Base class of every detector. See the module docstring for the hooks a method implements."""

    name: ClassVar[str] = ""
    _parameter_constraints: ClassVar[dict[str, Sequence]] = {}
    # how predicted masks are opened unless ``predict`` is told otherwise: a structuring element
    # of this shape ("square" or "disk") and size
    opening_shape: ClassVar[str] = "square"
    default_opening: ClassVar[int] = 3
    # True for a method that learns from labelled good AND defective images (a classifier)
    supervised: ClassVar[bool] = False

    # ------------------------------------------------------------------ parameters
    @classmethod
    def _init_parameters(cls) -> dict[str, inspect.Parameter]:
        """The keyword-only constructor parameters of ``cls`` and of every base it passes ``**params``
        on to (a subclass's own declaration, and so its default, wins)."""
        parameters: dict[str, inspect.Parameter] = {}
        for klass in cls.__mro__:
            if "__init__" not in vars(klass) or klass is object:
                continue
            signature = inspect.signature(klass.__init__)
            for parameter in signature.parameters.values():
                if parameter.kind == parameter.KEYWORD_ONLY:
                    parameters.setdefault(parameter.name, parameter)
            if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
                break
        return parameters

    @classmethod
    def _param_names(cls) -> list[str]:
        return list(cls._init_parameters())

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, as given."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Detector:
        """Set constructor parameters (validated at the next ``fit``); returns self."""
        unknown = sorted(set(params) - set(self._param_names()))
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no parameter(s) {unknown}.")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def clone(self) -> Detector:
        """An unfitted detector with the same parameters."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        defaults = {name: p.default for name, p in self._init_parameters().items()}
        changed = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults.get(k))
        return f"{type(self).__name__}({changed})"

    def _validate(self) -> None:
        validate_params(type(self).__name__, self.get_params(), self._parameter_constraints)

    # ------------------------------------------------------------------ fitting
    def fit(self, images: ImageDataset | Sequence | str, *, progress: bool = True) -> Detector:
        """Learn what good looks like from good images only; returns self.

        ``images`` is a dataset, a folder or a list of paths / arrays / PIL images. Labels, if
        present, must all be good -- except for a ``supervised`` method, which needs labelled good
        and defective images. Fitting again forgets the previous fit and calibration.
        """
        self._validate()
        dataset = as_dataset(images, split="test" if self.supervised else "train")
        if len(dataset) == 0:
            raise DataError(f"{type(self).__name__}.fit got no images ({dataset!r}); it needs at least 1 good image.")
        if self.supervised:
            _check_labelled(dataset, type(self).__name__)
        elif (dataset.labels == DEFECTIVE).any():
            raise DataError(
                f"{dataset!r} contains defective images; {type(self).__name__} learns from good images only."
            )
        self.device_ = resolve_device(self.device)
        self._forget_calibration()
        self.show_progress_ = progress
        self._fit(dataset)
        return self

    def _forget_calibration(self) -> None:
        self.threshold_: float | None = None
        self.pixel_threshold_: float | None = None
        self.calibration_: dict[str, Any] = {}

    def _check_fitted(self) -> None:
        if not hasattr(self, "device_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this detector."
            )

    # ------------------------------------------------------------------ calibration
    def calibrate(
        self,
        images: ImageDataset | Sequence | str,
        *,
        rule: str = "sigma",
        k: float = 3.0,
        target_fpr: float = 0.01,
        progress: bool = True,
    ) -> Detector:
        """Set the OK / NOT OK threshold from validation images; returns self.

        ``sigma`` (default): mean + k std of the good images' scores -- needs no defective
        images. ``fpr``: the score quantile giving ``target_fpr`` false positives. ``f1``: best
        F1, needs labelled good and defective images. The same rule on the per-image maxima of
        the anomaly maps gives the pixel threshold used for masks and boxes.
        """
        self._check_fitted()
        dataset = as_dataset(images, split="test")
        labels = np.clip(dataset.labels, 0, 1)
        scores, map_maxima = [], []
        for result in self.iter_predict(dataset, progress=progress, description="calibrating"):
            scores.append(result.score)
            map_maxima.append(float(result.anomaly_map.max()))
        self.threshold_ = threshold_from_scores(np.array(scores), rule, k, target_fpr, labels)
        self.pixel_threshold_ = threshold_from_scores(np.array(map_maxima), rule, k, target_fpr, labels)
        self.calibration_ = {
            "rule": rule,
            "k": k,
            "target_fpr": target_fpr,
            "n_images": len(dataset),
            "n_defective": int((labels == 1).sum()),
        }
        return self

    @property
    def is_calibrated(self) -> bool:
        return getattr(self, "threshold_", None) is not None

    # ------------------------------------------------------------------ prediction
    def iter_predict(
        self,
        images: ImageDataset | Sequence | str,
        *,
        batch_size: int | None = None,
        on_error: str = "raise",
        progress: bool = True,
        description: str = "scoring",
    ) -> Iterator[ScoredImage]:
        """Score images one batch at a time, yielding one :class:`ScoredImage` per input, in order.

        Memory stays bounded by one batch. With ``on_error="skip"`` an unreadable image yields a
        result with ``error`` set instead of stopping the run.
        """
        self._check_fitted()
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip'. Got {on_error!r} instead.")
        dataset = as_dataset(images, split="test")
        size = batch_size or self.batch_size
        with progress_bar(description, len(dataset), progress and getattr(self, "show_progress_", True)) as bar:
            for start in range(0, len(dataset), size):
                chunk = dataset.samples[start : start + size]
                yield from self._predict_chunk(chunk, on_error)
                bar.advance(len(chunk))

    def _predict_chunk(self, chunk: list[Sample], on_error: str) -> Iterator[ScoredImage]:
        results: list[ScoredImage | None] = [None] * len(chunk)
        pixels, readable = [], []
        for position, sample in enumerate(chunk):
            try:
                pixels.append(read_image(sample.image))
                readable.append(position)
            except DataError as error:
                if on_error == "raise":
                    raise
                results[position] = ScoredImage(sample, error=str(error))
        if pixels:
            with torch.inference_mode():
                scores, maps = self._score_images(pixels)
                scores = scores.float().cpu().numpy()
                for index, (position, image) in enumerate(zip(readable, pixels)):
                    anomaly_map = upsample_maps(maps[index][None].float(), image.shape[:2])[0].cpu().numpy()
                    results[position] = ScoredImage(chunk[position], float(scores[index]), anomaly_map, image=image)
        yield from results  # type: ignore[misc]

    def predict(
        self,
        images: ImageDataset | Sequence | str,
        *,
        batch_size: int | None = None,
        opening: int | None = None,
        on_error: str = "raise",
        progress: bool = True,
    ) -> Prediction:
        """Score images: scores, anomaly maps at each image's size, and -- once calibrated -- labels, masks, boxes.

        ``opening`` is the size of the structuring element (``opening_shape``) that opens the
        thresholded map; ``None`` = the method's ``default_opening``, 0 = none.
        """
        names, scores, maps, errors = [], [], [], {}
        for result in self.iter_predict(images, batch_size=batch_size, on_error=on_error, progress=progress):
            if result.error is not None:
                errors[result.sample.name] = result.error
                continue
            names.append(result.sample.name)
            scores.append(result.score)
            maps.append(result.anomaly_map)
        score_array = np.asarray(scores, dtype=np.float64)
        if not self.is_calibrated:
            return Prediction(names, score_array, maps, errors=errors)
        decisions = [self.decide(score, anomaly_map, opening) for score, anomaly_map in zip(scores, maps)]
        labels = np.array([label for label, _, _ in decisions], dtype=bool)
        masks = [mask for _, mask, _ in decisions]
        boxes = [box for _, _, box in decisions]
        return Prediction(names, score_array, maps, labels, masks, boxes, self.threshold_, errors)

    def decide(
        self, score: float, anomaly_map: np.ndarray, opening: int | None = None
    ) -> tuple[bool, np.ndarray, list[Box]]:
        """``(NOT OK?, defect mask, boxes)`` for one scored image, at the calibrated thresholds."""
        if not self.is_calibrated:
            raise NotFittedError(
                f"This {type(self).__name__} instance is not calibrated yet. Call 'calibrate' with good "
                "validation images to set the OK / NOT OK threshold."
            )
        size = self.default_opening if opening is None else opening
        mask = segment(anomaly_map, self.pixel_threshold_, size, self.opening_shape)
        return bool(score > self.threshold_), mask, boxes_from_mask(mask, anomaly_map)

    def _score_images(self, images: list[np.ndarray]) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        """Scores ``(N,)`` and one map per image (any size; resized to the image afterwards).

        By default the images are resized to one tensor for ``_score_batch``; a method that works
        at each image's own resolution overrides this instead.
        """
        return self._score_batch(self._to_tensor(images).to(self.device_))

    def _training_batches(self, samples: ImageDataset | Sequence[Sample], description: str) -> Iterator[torch.Tensor]:
        """Model-input tensors of ``samples`` (a dataset or a list of samples), ``batch_size`` at a
        time, on the model's device, with a progress bar -- for the passes over good images in ``fit``."""
        samples = samples.samples if isinstance(samples, ImageDataset) else list(samples)
        with progress_bar(description, len(samples), self.show_progress_) as bar:
            for start in range(0, len(samples), self.batch_size):
                chunk = samples[start : start + self.batch_size]
                yield self._to_tensor([read_image(sample.image) for sample in chunk]).to(self.device_)
                bar.advance(len(chunk))

    def _to_tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        mean, std = self._normalisation()
        return to_model_input(images, self.image_size, mean, std)

    @contextmanager
    def _seeded(self) -> Iterator[None]:
        """Run a block on the global torch RNG seeded with ``seed`` (CPU and the model's CUDA
        device), leaving the caller's RNG state as it was."""
        devices = [self.device_.index or 0] if self.device_.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            yield

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path) -> Path:
        """Write ``path/config.json`` and ``path/model.safetensors``; returns the directory."""
        from flawscope.serialization import save_detector

        return save_detector(self, path)

    def _calibration_state(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold_,
            "pixel_threshold": self.pixel_threshold_,
            "calibration": self.calibration_,
        }

    def _restore_calibration(self, state: dict[str, Any]) -> None:
        self.threshold_ = state.get("threshold")
        self.pixel_threshold_ = state.get("pixel_threshold")
        self.calibration_ = state.get("calibration", {})

    # ------------------------------------------------------------------ hooks
    def _fit(self, dataset: ImageDataset) -> None:
        raise NotImplementedError

    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _normalisation(self) -> tuple[Sequence[float], Sequence[float]]:
        raise NotImplementedError

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _state_meta(self) -> dict[str, Any]:
        return {}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        raise NotImplementedError


def _check_labelled(dataset: ImageDataset, who: str) -> None:
    labels = dataset.labels
    if (labels < 0).any():
        raise DataError(f"{dataset!r} has unlabelled images; {who} learns from labelled good and defective images.")
    if not (labels == DEFECTIVE).any() or (labels == DEFECTIVE).all():
        raise DataError(
            f"{who} needs good and defective images to learn from; {dataset!r} has "
            f"{int((labels != DEFECTIVE).sum())} good and {int((labels == DEFECTIVE).sum())} defective."
        )


class BackboneDetector(Detector):
    """A detector on a frozen pretrained backbone (parameters ``backbone``, ``layers``, ``weights``).

    Builds the shared :class:`FeatureExtractor`, normalises input the way the backbone was
    trained, and refuses to load a model whose backbone weights differ from those it was fitted
    with.
    """

    backbone: str
    layers: Sequence[int]
    weights: str | None

    def _build_extractor(self) -> None:
        self.extractor_ = FeatureExtractor(self.backbone, self.layers, self.weights).to(self.device_)

    def _normalisation(self) -> tuple[Sequence[float], Sequence[float]]:
        return self.extractor_.cfg.mean, self.extractor_.cfg.std

    def _state_meta(self) -> dict[str, Any]:
        return {"backbone_fingerprint": self.extractor_.fingerprint}

    def _restore_extractor(self, meta: dict[str, Any]) -> None:
        """Rebuild the extractor and check it has the weights the saved state was fitted with."""
        self._build_extractor()
        if self.extractor_.fingerprint != meta["backbone_fingerprint"]:
            raise WeightsError(
                f"This {type(self).__name__} was fitted with backbone weights {meta['backbone_fingerprint']} but the "
                f"weights found now are {self.extractor_.fingerprint}; its state only matches the original weights."
            )


__all__ = [
    "BackboneDetector",
    "Detector",
    "FlawscopeError",
    "Prediction",
    "ScoredImage",
    "create",
    "list_models",
    "register_detector",
]
