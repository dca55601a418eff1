"""The detector contract shared by every method: parameters, fit, calibrate, predict, save.

A method subclasses :class:`Detector` (or :class:`BackboneDetector`), declares
``_parameter_constraints``, implements small hooks and registers itself
(:func:`flawscope.models.registry.register_detector`):

* ``_fit(dataset, progress)`` -- learn state from good images (attributes ending in ``_``);
* ``_normalisation()`` -- the ``(mean, std)`` its input tensors are normalised with;
* ``_score_batch(batch)`` -- ``N x 3 x S x S`` tensor -> ``(scores (N,), maps (N, S, S))``
  (or ``_score_images(images)`` for a method that scores each image at its own resolution);
* ``_state_tensors()`` / ``_state_meta()`` / ``_restore(tensors, meta)`` -- what
  :mod:`flawscope.serialization` saves and how it is brought back (through :mod:`flawscope.state`).

Reading images, batching, resizing maps back to each image's size, thresholds, masks and boxes
live here once and are never re-implemented by a method.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from flawscope._progress import progress_bar
from flawscope._validation import NONE, STRING, Constraints, Interval, int_sequence, validate_params
from flawscope.data.datasets import DEFECTIVE, ImageDataset, Sample, as_dataset
from flawscope.data.io import read_image
from flawscope.data.splits import group_kfold
from flawscope.data.transforms import normalise, resize_batch
from flawscope.devices import resolve_device
from flawscope.errors import ConfigError, DataError, NotFittedError, WeightsError
from flawscope.features.extractor import FeatureExtractor
from flawscope.maps import upsample_maps
from flawscope.models.registry import SUPERVISED, UPDATABLE, list_models
from flawscope.postprocess import ThresholdRule
from flawscope.scoring import Scorer
from flawscope.tiling import TILING_DEFAULTS, Tiling, tile_dataset

DetectorT = TypeVar("DetectorT", bound="Detector")

# Parameter constraints shared by methods: every method has the run parameters, every method on
# a pretrained backbone the backbone ones. A method's table is ``{**BACKBONE_CONSTRAINTS, ...,
# **RUN_CONSTRAINTS}``.
RUN_CONSTRAINTS: Constraints = {
    "batch_size": [Interval(int, 1, None)],
    "device": [STRING],
    "seed": [Interval(int, 0, None)],
}
BACKBONE_CONSTRAINTS: Constraints = {"backbone": [STRING], "layers": [int_sequence(0)], "weights": [NONE, STRING]}
# every method's tiling parameters (:mod:`flawscope.tiling`), kept by the base class rather than each constructor;
# how they relate (an overlap of at most half the tile) is checked by :class:`Tiling`
TILING_CONSTRAINTS: Constraints = {
    "tile": [NONE, Interval(int, 1, None)],
    "overlap": [Interval(int, 0, None)],
    "tile_scale": [Interval(float, 0.0, None, "neither")],
}


class Detector(Scorer):
    """Base class of every detector. See the module docstring for the hooks a method implements."""

    # set by register_detector
    name: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    _parameter_constraints: ClassVar[Constraints] = {}
    # named sets of parameters a method offers (``flawscope fit --preset NAME``, ``create(name, preset=NAME)``)
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    image_size: int
    batch_size: int
    device: str
    seed: int
    # tiling (flawscope.tiling): parameters of every method, set through the registry, set_params or the CLI
    tile: int | None = TILING_DEFAULTS["tile"]
    overlap: int = TILING_DEFAULTS["overlap"]
    tile_scale: float = TILING_DEFAULTS["tile_scale"]
    device_: torch.device
    # the fit and every update or recalibration since (see ``update``), and the content hash of the directory the
    # model was last saved to or loaded from (None when it changed since)
    lineage_: list[dict[str, Any]]
    version_: str | None = None

    # ------------------------------------------------------------------ parameters
    @classmethod
    def _init_parameters(cls) -> dict[str, inspect.Parameter]:
        """The keyword-only constructor parameters of ``cls`` and of every base it passes ``**params``
        on to (a subclass's own declaration, and so its default, wins)."""
        parameters: dict[str, inspect.Parameter] = {}
        for klass in cls.__mro__:
            if "__init__" not in vars(klass) or klass is object:
                continue
            signature = inspect.signature(klass.__init__)  # type: ignore[misc]
            for parameter in signature.parameters.values():
                if parameter.kind == parameter.KEYWORD_ONLY:
                    parameters.setdefault(parameter.name, parameter)
            if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
                break
        return parameters

    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the parameters: the constructor's, then the tiling ones every method has (``tile``,
        ``overlap``, ``tile_scale``; :mod:`flawscope.tiling`)."""
        return [*cls._init_parameters(), *TILING_DEFAULTS]

    @classmethod
    def from_params(cls: type[DetectorT], params: dict[str, Any]) -> DetectorT:
        """An unfitted detector with these parameters (constructor and tiling ones alike)."""
        constructor = cls._init_parameters()
        detector = cls(**{name: value for name, value in params.items() if name in constructor})
        detector.set_params(**{name: value for name, value in params.items() if name not in constructor})
        return detector

    @property
    def supervised(self) -> bool:
        """True for a method that learns from labelled good AND defective images (a classifier)."""
        return SUPERVISED in self.capabilities

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, as given."""
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params: Any) -> Detector:
        """Set constructor parameters (validated at the next ``fit``); returns self."""
        unknown = sorted(set(params) - set(self.param_names()))
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no parameter(s) {unknown}.")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def clone(self) -> Detector:
        """An unfitted detector with the same parameters."""
        return type(self).from_params(self.get_params())

    def __repr__(self) -> str:
        defaults = {**{name: p.default for name, p in self._init_parameters().items()}, **TILING_DEFAULTS}
        changed = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults.get(k))
        return f"{type(self).__name__}({changed})"

    def _validate(self) -> None:
        owner = type(self).__name__
        validate_params(owner, self.get_params(), {**self._parameter_constraints, **TILING_CONSTRAINTS})
        if self._tiling() is not None:
            refusal = self._tiling_refusal()
            if refusal is not None:
                raise ConfigError(f"{owner} cannot be tiled: {refusal}")

    def _tiling(self) -> Tiling | None:
        return Tiling.from_params({name: getattr(self, name) for name in TILING_DEFAULTS})

    def _tiling_refusal(self) -> str | None:
        """Why this method cannot learn from and score tiles (``tile`` set), or None when it can."""
        if self.supervised:
            return (
                "it learns from labelled whole images, and a tile of a defective image may show no defect. "
                "Fit it on crops of the size its images are scored at instead."
            )
        return None

    # ------------------------------------------------------------------ fitting
    def fit(self, images: ImageDataset | Sequence | str, *, progress: bool = True) -> Detector:
        """Learn what good looks like from good images only; returns self.

        ``images`` is a dataset, a folder or a list of paths / arrays / PIL images. Labels, if
        present, must all be good -- except for a ``supervised`` method, which needs labelled good
        and defective images. Fitting again forgets the previous fit and calibration; a fit that
        fails leaves the detector as it was before (fitted or not).
        """
        self._validate()
        dataset = as_dataset(images, split="test" if self.supervised else "train")
        if self.supervised:
            _check_some(dataset, f"{type(self).__name__}.fit")
            _check_labelled(dataset, type(self).__name__)
        else:
            self._check_good(dataset, "fit")
        training = self._training_set(dataset)
        before = self._learned_state()
        self._set_learned_state({})
        try:
            self.device_ = resolve_device(self.device)
            self._forget_calibration()
            self._fit(training, progress)
        except BaseException:
            self._set_learned_state(before)
            raise
        self.lineage_ = [{"event": "fit", **self._counted(dataset, training)}]
        return self

    def _training_set(self, dataset: ImageDataset) -> ImageDataset:
        """What ``_fit`` / ``_update`` learn from: the images, or their tiles for a tiled model."""
        tiling = self._tiling()
        return dataset if tiling is None else tile_dataset(dataset, tiling)

    @staticmethod
    def _counted(dataset: ImageDataset, training: ImageDataset) -> dict[str, int]:
        """How many images (and, when tiled, tiles) a fit or an update learned from, for ``lineage_``."""
        return {"images": len(dataset), **({"tiles": len(training)} if training is not dataset else {})}

    def _check_good(self, dataset: ImageDataset, action: str) -> None:
        """DataError unless ``dataset`` holds at least one image and no image labelled defective."""
        _check_some(dataset, f"{type(self).__name__}.{action}")
        if (dataset.labels == DEFECTIVE).any():
            raise DataError(
                f"{dataset!r} contains defective images; {type(self).__name__} learns from good images only."
            )

    def update(self, images: ImageDataset | Sequence | str, *, progress: bool = True) -> Detector:
        """A new version of this fitted model that has also learned the good ``images``; this one is unchanged.

        For methods where adding good images is cheap and well defined (``fs.list_models(capability="updatable")``):
        PaDiM merges them into its per-position Gaussians exactly (the result equals a fit on all the images);
        PatchCore adds the patches of theirs its memory bank covers worst (see :meth:`PatchCore._update`).
        Any other method refuses: fit it again on all good images instead.

        The threshold stays the one calibrated before (:meth:`recalibrate` sets a new one from verdicts);
        ``lineage_`` records the fit and every update with its images, what it changed, how long it took
        and the version (``version_``, the content hash of the saved directory) it was made from.
        """
        if UPDATABLE not in self.capabilities:
            raise ConfigError(
                f"{type(self).__name__} cannot learn new good images without fitting again: its state is not a "
                f"sum over images. Methods that can: {', '.join(list_models(capability=UPDATABLE))}. Fit it again "
                "on all the good images instead."
            )
        self._check_fitted()
        dataset = as_dataset(images, split="train")
        self._check_good(dataset, "update")
        started = time.perf_counter()
        updated = copy.copy(self)
        updated.calibration_ = copy.deepcopy(self.calibration_)
        training = self._training_set(dataset)
        changes = updated._update(training, progress)
        seconds = round(time.perf_counter() - started, 3)
        event = {"event": "update", **self._counted(dataset, training), **changes, "seconds": seconds}
        updated._record(event, self.version_)
        return updated

    def _record(self, event: dict[str, Any], parent: str | None) -> None:
        """Append ``event``, made from version ``parent``, to ``lineage_``: this model is no longer a saved one."""
        self.lineage_ = [*getattr(self, "lineage_", []), {**event, "parent": parent}]
        self.version_ = None

    def _learned_state(self) -> dict[str, Any]:
        """Every learned attribute (public, name ending in ``_``)."""
        return {key: value for key, value in vars(self).items() if key.endswith("_") and not key.startswith("_")}

    def _set_learned_state(self, state: dict[str, Any]) -> None:
        """Replace every learned attribute by those of ``state``."""
        for key in self._learned_state():
            delattr(self, key)
        vars(self).update(state)

    def _forget_calibration(self) -> None:
        self.version_ = None  # a model whose thresholds change is no longer the one saved
        self.threshold_ = None
        self.pixel_threshold_ = None
        self.calibration_ = {}

    def _set_thresholds(
        self: DetectorT,
        scores: np.ndarray,
        map_maxima: np.ndarray,
        labels: np.ndarray,
        chosen: ThresholdRule,
        source: str,
    ) -> DetectorT:
        self.version_ = None  # a model whose thresholds change is no longer the one saved
        return super()._set_thresholds(scores, map_maxima, labels, chosen, source)

    def _check_fitted(self) -> None:
        if not hasattr(self, "device_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this detector."
            )

    # ------------------------------------------------------------------ calibration
    def fit_out_of_fold(
        self,
        images: ImageDataset | Sequence | str,
        *,
        n_folds: int = 5,
        rule: str | None = None,
        k: float | None = None,
        target_fpr: float | None = None,
        progress: bool = True,
    ) -> Detector:
        """Fit on every good image and set the threshold on their out-of-fold scores; returns self.

        For few good images: none is held out from training, yet none scores as its own
        neighbour. Each image is scored by a model fitted without it -- without its whole group
        when the images have groups (``Sample.group``: a part's other captures score like the part
        itself) -- over ``n_folds`` folds of groups (of images when there are none): ``n_folds``
        more fits. A method that can leave images out of its fitted state exactly does so instead
        (PatchCore with its full memory bank: the patches of the image's group). The rule is that
        of :meth:`calibrate`. Augmented views (``Sample.view > 0``, :func:`flawscope.datasets.augment`) are
        fitted on but not calibrated on: the threshold rests on the images as taken.
        """
        if self.supervised:
            raise ConfigError(f"{type(self).__name__} learns from labelled images and sets its own threshold.")
        dataset = as_dataset(images, split="train")
        self.fit(dataset, progress=progress)
        groups = [sample.group or f"image {i}" for i, sample in enumerate(dataset.samples)]
        scores, map_maxima = self._out_of_fold_scores(dataset, groups, n_folds, progress)
        taken = np.array([sample.view == 0 for sample in dataset.samples])  # augmented views train, never calibrate
        labels = np.zeros(int(taken.sum()), dtype=np.int64)
        chosen = self.default_threshold.with_changes(rule, k, target_fpr)
        source = f"out of fold, {n_folds} folds"
        return self._set_thresholds(scores[taken], map_maxima[taken], labels, chosen, source)

    def _out_of_fold_scores(
        self, dataset: ImageDataset, groups: list[str], n_folds: int, progress: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and map maxima of ``dataset``, each from a clone fitted on the other folds of groups."""
        folds = min(n_folds, len(set(groups)))
        if folds < 2:
            raise DataError(f"Out-of-fold scores need at least 2 groups (or images); {dataset!r} has {folds}.")
        scores, map_maxima = np.zeros(len(dataset)), np.zeros(len(dataset))
        position = {id(sample): index for index, sample in enumerate(dataset.samples)}
        for rest, fold in group_kfold(dataset, folds, seed=self.seed, groups=groups):
            model = self.clone().fit(rest, progress=False)
            fold_scores, fold_maxima = model._scores_and_map_maxima(fold, progress)
            where = [position[id(sample)] for sample in fold.samples]
            scores[where], map_maxima[where] = fold_scores, fold_maxima
        return scores, map_maxima

    def recalibrate(
        self,
        good: ImageDataset | Sequence | str,
        defective: ImageDataset | Sequence | str = (),
        *,
        progress: bool = True,
    ) -> Detector:
        """:meth:`Scorer.recalibrate <flawscope.scoring.Scorer.recalibrate>`, recorded in ``lineage_`` with the
        version it was made from."""
        parent = self.version_
        super().recalibrate(good, defective, progress=progress)
        n_defective = self.calibration_["n_defective"]
        good_count = self.calibration_["n_images"] - n_defective
        self._record({"event": "recalibrate", "good": good_count, "defective": n_defective}, parent)
        return self

    # ------------------------------------------------------------------ prediction
    def _score_pixels(self, pixels: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        with torch.inference_mode():
            scores, maps = self._score_images(pixels)
            score_values = scores.float().cpu().numpy()
            return [
                (float(score_values[index]), upsample_maps(maps[index][None].float(), image.shape[:2])[0].cpu().numpy())
                for index, image in enumerate(pixels)
            ]

    def _score_images(self, images: list[np.ndarray]) -> tuple[torch.Tensor, Sequence[torch.Tensor] | torch.Tensor]:
        """Scores ``(N,)`` and one map per image (any size; resized to the image afterwards).

        By default the images are resized to the model's input size (:meth:`_input_size`) and
        scored by ``_score_batch``, one batch per input size; a method that works at each image's
        own resolution overrides this instead.
        """
        sizes = [self._input_size(*image.shape[:2]) for image in images]
        if len(set(sizes)) == 1:
            return self._score_batch(self._to_tensor(images).to(self.device_))
        scores = torch.empty(len(images), device=self.device_)
        maps: list[torch.Tensor] = [torch.empty(0)] * len(images)
        for size in dict.fromkeys(sizes):
            where = [index for index, other in enumerate(sizes) if other == size]
            size_scores, size_maps = self._score_batch(self._to_tensor([images[i] for i in where]).to(self.device_))
            scores[where] = size_scores.to(scores.dtype)
            for position, index in enumerate(where):
                maps[index] = size_maps[position]
        return scores, maps

    def _input_size(self, height: int, width: int) -> tuple[int, int]:
        """The model input size of an image of this size: ``image_size`` squared, unless a method keeps
        the aspect ratio."""
        return self.image_size, self.image_size

    def _training_batches(
        self, samples: ImageDataset | Sequence[Sample], description: str, progress: bool
    ) -> Iterator[torch.Tensor]:
        """Model-input tensors of ``samples`` (a dataset or a list of samples), ``batch_size`` at a
        time, on the model's device, with a progress bar -- for the passes over good images in ``fit``."""
        samples = samples.samples if isinstance(samples, ImageDataset) else list(samples)
        with progress_bar(description, len(samples), progress) as bar:
            for start in range(0, len(samples), self.batch_size):
                chunk = samples[start : start + self.batch_size]
                yield self._to_tensor([read_image(sample.image) for sample in chunk]).to(self.device_)
                bar.advance(len(chunk))

    def _to_tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        """Model input of images that share one input size."""
        return self._model_input(resize_batch(images, self._input_size(*images[0].shape[:2])))

    def _model_input(self, images: torch.Tensor) -> torch.Tensor:
        """``N x 3 x H x W`` RGB in [0, 1] at the input size -> what ``_score_batch`` takes: by default normalised
        with ``_normalisation()``. An exported graph starts here (:mod:`flawscope.export`)."""
        mean, std = self._normalisation()
        return normalise(images, mean, std)

    @contextmanager
    def _seeded(self) -> Iterator[None]:
        """Run a block on the global torch RNG seeded with ``seed`` (CPU and the model's CUDA
        device), leaving the caller's RNG state as it was -- for what cannot take a
        ``torch.Generator``: layers' initial weights and dropout."""
        devices = [self.device_.index or 0] if self.device_.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            yield

    def _generator(self) -> torch.Generator:
        """A CPU ``torch.Generator`` seeded with ``seed``: the source of a fit's random draws."""
        return torch.Generator().manual_seed(self.seed)

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

    # ------------------------------------------------------------------ export
    def export(self, out: str | Path, graph_format: str = "onnx") -> Path:
        """Write the scoring graph (ONNX; ``openvino`` adds OpenVINO's IR) and ``metadata.json`` to ``out`` for
        :mod:`flawscope.runtime`; see :func:`flawscope.export.export_detector`."""
        from flawscope.export import export_detector

        return export_detector(self, out, graph_format)

    def _export_refusal(self, graph_format: str) -> str | None:
        """Why this method's scoring cannot be exported as a ``graph_format`` graph, or None when it can."""
        return None

    def _parity_tolerance(self) -> tuple[float, float] | None:
        """``(score relative, map absolute)`` tolerance of an export's parity where it is not
        :data:`flawscope.export.SCORE_RTOL` / :data:`~flawscope.export.MAP_ATOL`."""
        return None

    def _export_context(self) -> contextlib.AbstractContextManager[None]:
        """What holds while the scoring graph is traced (e.g. a graph-friendly nearest-neighbour search)."""
        return contextlib.nullcontext()

    def _probe_size(self) -> tuple[int, int]:
        """``(height, width)`` of the grey image a load scores to check the saved model (the model's input)."""
        height, width = self._export_input()["size"]
        return height, width

    def _export_input(self) -> dict[str, Any]:
        """The graph's input ``size`` ``[H, W]``, and ``aspect_short_side`` for a model that keeps each image's
        aspect ratio (:func:`flawscope.data.sizes.aspect_size`; its graph takes images of the training images'
        aspect ratio only)."""
        return {"size": list(self._input_size(self.image_size, self.image_size)), "aspect_short_side": None}

    # ------------------------------------------------------------------ hooks
    def _fit(self, dataset: ImageDataset, progress: bool) -> None:
        raise NotImplementedError

    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _update(self, dataset: ImageDataset, progress: bool) -> dict[str, Any]:
        """Learn the good images of ``dataset`` too (an ``updatable`` method), assigning new learned tensors
        rather than changing the present ones in place (the model it was copied from shares them); returns
        what changed, for ``lineage_``."""
        raise NotImplementedError

    def _normalisation(self) -> tuple[Sequence[float], Sequence[float]]:
        raise NotImplementedError

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _state_meta(self) -> dict[str, Any]:
        return {}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        raise NotImplementedError


def _check_some(dataset: ImageDataset, who: str) -> None:
    if len(dataset) == 0:
        raise DataError(f"{who} got no images ({dataset!r}); it needs at least 1 good image.")


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
    extractor_: FeatureExtractor

    def _build_extractor(self) -> None:
        self.extractor_ = FeatureExtractor(self.backbone, self.layers, self.weights).to(self.device_)
        engine = self._backbone_engine()
        if engine != "torch" and self.device_.type != "cpu":
            raise ConfigError(
                f"engine={engine!r} runs the backbone on the CPU, but this model is on {self.device_}: give "
                "device='cpu', or engine='torch' to run it on the GPU."
            )
        self.extractor_.use_engine(engine)

    def _backbone_engine(self) -> str:
        """What runs the backbone (:data:`flawscope.features.extractor.ENGINES`): torch, unless a method lets the
        user choose."""
        return "torch"

    def _normalisation(self) -> tuple[Sequence[float], Sequence[float]]:
        return self.extractor_.cfg.mean, self.extractor_.cfg.std

    def _state_meta(self) -> dict[str, Any]:
        return {"backbone_fingerprint": self.extractor_.fingerprint}

    def _restore_extractor(self, meta: dict[str, Any]) -> None:
        """Rebuild the extractor and check it has the weights the saved state was fitted with."""
        self._build_extractor()
        check_fingerprint(type(self).__name__, meta["backbone_fingerprint"], self.extractor_.fingerprint)


def check_fingerprint(who: str, saved: str, found: str) -> None:
    """WeightsError unless the pretrained weights ``found`` now are those (``saved``) a model was fitted with."""
    if saved != found:
        raise WeightsError(
            f"This {who} was fitted with pretrained weights {saved} but the weights found now are {found}; "
            "its learned state only matches the original weights."
        )


__all__ = ["BACKBONE_CONSTRAINTS", "RUN_CONSTRAINTS", "BackboneDetector", "Detector", "check_fingerprint"]
