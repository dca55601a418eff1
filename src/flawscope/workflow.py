"""Library policy shared by the command line, the benchmarks and (later) the service -- written once here.

* :func:`open_data`: a data spec (a folder, or ``elpv:mono`` / ``elpv:poly`` / ``elpv:all``) -> a dataset;
* :func:`training_data` / :func:`evaluation_data`: which images a method fits on, is calibrated on and is
  tested on;
* :func:`fit_and_calibrate`: fit + calibrate, returning the model and the datasets it used;
* :func:`run_benchmark`: fit + calibrate + evaluate in this process, with time and peak memory;
* :func:`parse_params`: ``KEY=VALUE`` pairs (JSON values) -> method parameters.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flawscope import __version__
from flawscope._memory import peak_rss_mib
from flawscope.data import augment as augmentation
from flawscope.data.datasets import GOOD, IMAGE_SUFFIXES, ImageDataset, Sample, open_dataset
from flawscope.data.elpv import ELPV
from flawscope.data.splits import group_split, holdout_split, stratified_split, with_groups
from flawscope.devices import cpu_description
from flawscope.errors import ConfigError, DataError
from flawscope.evaluation import Report, evaluate
from flawscope.models.base import Detector
from flawscope.models.registry import SUPERVISED, create, model_entry
from flawscope.postprocess import ThresholdRule

SUPERVISED_TEST_SHARE = 0.2  # of a supervised method's labelled images; its fit holds out another 20 % to validate


def open_data(spec: str | os.PathLike, split: str, groups: str | None = None) -> ImageDataset:
    """A dataset from a data spec: a folder, or ``elpv:<cell type>[:<scheme>]`` (``elpv:mono``,
    ``elpv:poly``, ``elpv:all``; scheme ``module``, the default, or ``shuffled``: see :class:`ELPV`).

    ``split`` is 'train', 'validation' (ELPV only), 'test' or 'labelled': every labelled image for
    a supervised method (a folder's test images; ELPV's good cells and those with a defect
    probability of at least 2/3). ``groups`` is a file-name pattern giving each image's group
    (:func:`flawscope.data.splits.groups_from_pattern`); ELPV's module scheme brings its own.
    """
    text = str(spec)
    if text.startswith("elpv:"):
        if groups is not None:
            raise ConfigError("ELPV brings its own groups (its solar modules); give no group pattern with elpv:.")
        cell_type, scheme = [*text.split(":")[1:], "module"][:2]
        probability = 2 / 3 if split == "labelled" else 1.0
        return ELPV(split, cell_type=cell_type, defect_probability=probability, scheme=scheme)
    if split == "validation":
        raise DataError(f"{spec} has no validation split; hold out part of the training images instead.")
    dataset = open_dataset(spec, "test" if split == "labelled" else split)
    return dataset if groups is None else with_groups(dataset, groups)


@dataclass(frozen=True)
class TrainingData:
    """The images a fit learns from and those its threshold is calibrated on (``None`` for a supervised
    method, whose fit holds out its own validation images and sets its own threshold)."""

    train: ImageDataset
    calibration: ImageDataset | None


def training_data(
    spec: str | os.PathLike,
    *,
    supervised: bool,
    validation_fraction: float = 0.1,
    seed: int = 0,
    groups: str | None = None,
) -> TrainingData:
    """What a method fits and calibrates on.

    Unsupervised: the good training images, and as calibration ELPV's own validation cells, else
    about ``validation_fraction`` of the training images held out, seeded -- whole groups when the
    images have groups (``groups``: a file-name pattern), so that the threshold is set on parts the
    model never saw. Supervised: 80 % of the labelled good and defective images, seeded -- whole
    groups when known, else stratified (the other 20 % are :func:`evaluation_data`).
    """
    if supervised:
        return TrainingData(_supervised_parts(spec, seed, groups)[0], None)
    train = open_data(spec, "train", groups)
    if str(spec).startswith("elpv:"):
        return TrainingData(train, open_data(spec, "validation"))
    if _has_groups(train):
        rest, held_out = group_split(train, (1 - validation_fraction, validation_fraction), seed)
    else:
        rest, held_out = holdout_split(train, validation_fraction, seed)
    return TrainingData(rest, held_out)


def evaluation_data(
    spec: str | os.PathLike, *, supervised: bool, seed: int = 0, groups: str | None = None
) -> ImageDataset:
    """What a method is evaluated on: the test split, or for a supervised method the 20 % of the
    labelled images its fit did not see (the same seeded split as :func:`training_data`)."""
    return _supervised_parts(spec, seed, groups)[1] if supervised else open_data(spec, "test", groups)


def _supervised_parts(spec: str | os.PathLike, seed: int, groups: str | None) -> tuple[ImageDataset, ImageDataset]:
    labelled = open_data(spec, "labelled", groups)
    fractions = (1 - SUPERVISED_TEST_SHARE, SUPERVISED_TEST_SHARE)
    if not _has_groups(labelled):
        learn, test = stratified_split(labelled, fractions, seed)
        return learn, test
    learn, test = group_split(labelled, fractions, seed)
    if len(set(test.labels.tolist())) < 2 or len(set(learn.labels.tolist())) < 2:
        raise DataError(
            f"Split by group, {labelled!r} leaves one side without good or without defective images; "
            "a supervised method needs more groups with both."
        )
    return learn, test


def _has_groups(dataset: ImageDataset) -> bool:
    return len(dataset) > 0 and all(sample.group is not None for sample in dataset.samples)


@dataclass
class FitResult:
    """A fitted (and, when unsupervised, calibrated) model with the datasets it used."""

    model: Detector
    data: TrainingData
    fit_seconds: float


def fit_and_calibrate(
    model_name: str,
    spec: str | os.PathLike,
    params: dict[str, Any] | None = None,
    *,
    validation_fraction: float = 0.1,
    threshold: ThresholdRule | None = None,
    groups: str | None = None,
    augment: Sequence[str] = (),
    augment_copies: int = 4,
    out_of_fold: bool = False,
    progress: bool = True,
) -> FitResult:
    """Create ``model_name`` with ``params``, fit it on :func:`training_data` and calibrate it on the
    held-out good images with ``threshold`` (None: the method's default rule); a supervised method
    sets its own threshold while fitting.

    For a few good images: ``augment`` (e.g. ``["hflip", "rotate=5"]``, :func:`flawscope.datasets.augment`) adds
    ``augment_copies`` views of every training image; ``out_of_fold`` holds nothing out -- the model is fitted on
    every good image and calibrated on their out-of-fold scores (:meth:`Detector.fit_out_of_fold`;
    ``data.calibration`` is then None).
    """
    params = dict(params or {})
    supervised = model_entry(model_name).supports(SUPERVISED)
    if supervised and (augment or out_of_fold):
        raise ConfigError(f"{model_name} learns from labelled images; augment and out_of_fold are for good images.")
    seed = params.get("seed", 0)
    data = training_data(spec, supervised=supervised, validation_fraction=validation_fraction, seed=seed, groups=groups)
    if out_of_fold:
        assert data.calibration is not None
        data = TrainingData(ImageDataset([*data.train, *data.calibration], f"{spec} (every good image)"), None)
    learned = augmentation.augment(data.train, augment, augment_copies, seed) if augment else data.train
    model = create(model_name, **params)
    chosen = model.default_threshold if threshold is None else threshold
    started = time.perf_counter()
    if out_of_fold:
        model.fit_out_of_fold(learned, rule=chosen.rule, k=chosen.k, target_fpr=chosen.target_fpr, progress=progress)
        return FitResult(model, data, time.perf_counter() - started)
    model.fit(learned, progress=progress)
    fit_seconds = time.perf_counter() - started
    if data.calibration is not None:
        model.calibrate(data.calibration, rule=chosen.rule, k=chosen.k, target_fpr=chosen.target_fpr, progress=progress)
    return FitResult(model, data, fit_seconds)


@dataclass
class BenchmarkResult:
    """One :func:`run_benchmark`: the fit, the test set, the evaluation and what they cost."""

    fit: FitResult
    spec: str
    test: ImageDataset
    report: Report
    predict_seconds: float
    peak_rss_mib: float | None
    machine: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON record every benchmark in ``benchmarks/results`` is written in."""
        calibration = self.fit.data.calibration
        return {
            "model": self.fit.model.name,
            "data": self.spec,
            "params": self.fit.model.get_params(),
            "n_train": len(self.fit.data.train),
            "n_calibration": 0 if calibration is None else len(calibration),
            "n_test": len(self.test),
            "fit_seconds": round(self.fit.fit_seconds, 2),
            "predict_seconds": round(self.predict_seconds, 2),
            "predict_images_per_second": round(len(self.test) / self.predict_seconds, 2),
            "peak_rss_mib": None if self.peak_rss_mib is None else round(self.peak_rss_mib, 1),
            "metrics": {k: v for k, v in self.report.metrics.items() if k != "failed"},
            "machine": self.machine,
        }


def run_benchmark(
    model_name: str,
    spec: str | os.PathLike,
    params: dict[str, Any] | None = None,
    *,
    groups: str | None = None,
    progress: bool = False,
) -> BenchmarkResult:
    """Fit + calibrate (the method's default rule) + evaluate in this process; timings, peak memory and metrics."""
    fitted = fit_and_calibrate(model_name, spec, params, groups=groups, progress=progress)
    test = evaluation_data(spec, supervised=fitted.model.supervised, seed=fitted.model.seed, groups=groups)
    started = time.perf_counter()
    report = evaluate(fitted.model, test, worst_cases=0, progress=progress)
    predict_seconds = time.perf_counter() - started
    machine = {
        "cpu_threads": torch.get_num_threads(),
        **cpu_description(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(fitted.model.device_),
        "flawscope": __version__,
    }
    return BenchmarkResult(fitted, str(spec), test, report, predict_seconds, peak_rss_mib(), machine)


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``["coreset_ratio=0.01", "layers=[2,3]"]`` -> ``{"coreset_ratio": 0.01, "layers": [2, 3]}``: values are
    read as JSON where they parse, else kept as strings; ``-`` in keys becomes ``_``."""
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"A parameter is KEY=VALUE; got {pair!r}.")
        key, value = pair.split("=", 1)
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params


def image_collection(specs: Sequence[str]) -> ImageDataset:
    """Every image of the given folders (searched recursively) and data specs (``elpv:mono``: its training
    split; an MVTec-layout category: its training images), all labelled good."""
    samples: list[Sample] = []
    for spec in specs:
        folder = Path(spec)
        if spec.startswith("elpv:") or (folder / "train").is_dir():
            samples += open_data(spec, "train").samples
            continue
        if not folder.is_dir():
            raise DataError(f"{spec} is neither a folder nor a data spec such as elpv:mono.")
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise DataError(f"No images under {folder}.")
        samples += [Sample(path, str(path), GOOD, "good") for path in paths]
    return ImageDataset(samples, " + ".join(specs))
