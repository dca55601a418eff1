"""flawscope: visual anomaly detection for industrial inspection.

>>> import flawscope as fs
>>> "patchcore" in fs.list_models()
True
>>> model = fs.create("padim", image_size=64)
>>> model.get_params()["n_features"]
100

The library reports through the standard ``logging`` (logger ``flawscope``; silent unless the
application configures it) and ``warnings`` modules; it never prints.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from flawscope.data.io import set_max_pixels
from flawscope.errors import (
    CalibrationWarning,
    ConfigError,
    DataError,
    FlawscopeError,
    ModelFileError,
    NotFittedError,
    WeightsError,
)

if TYPE_CHECKING:
    from flawscope import datasets, workflow
    from flawscope.models.base import Detector
    from flawscope.models.registry import create, list_models, model_entry
    from flawscope.results import Prediction

logging.getLogger("flawscope").addHandler(logging.NullHandler())

# What ``import flawscope`` makes reachable only when first used: the detectors need torch, and
# ``flawscope.runtime`` (exported models) must import without it.
_LAZY = {
    "datasets": ("flawscope.datasets", None),
    "workflow": ("flawscope.workflow", None),
    "Detector": ("flawscope.models.base", "Detector"),
    "create": ("flawscope.models.registry", "create"),
    "list_models": ("flawscope.models.registry", "list_models"),
    "model_entry": ("flawscope.models.registry", "model_entry"),
    "Prediction": ("flawscope.results", "Prediction"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'flawscope' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    importlib.import_module("flawscope.models")  # registers the detectors
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def load(path, device=None) -> Detector:
    """Load a model saved with ``model.save(path)``."""
    from flawscope.serialization import load_detector

    return load_detector(path, device)


def evaluate(model: Detector, data, **kwargs):
    """Score a labelled dataset and compute the metrics; see :func:`flawscope.evaluation.evaluate`."""
    from flawscope.evaluation import evaluate as _evaluate

    return _evaluate(model, data, **kwargs)


__all__ = [
    "CalibrationWarning",
    "ConfigError",
    "DataError",
    "Detector",
    "FlawscopeError",
    "ModelFileError",
    "NotFittedError",
    "Prediction",
    "WeightsError",
    "__version__",
    "create",
    "datasets",
    "evaluate",
    "list_models",
    "load",
    "model_entry",
    "set_max_pixels",
    "workflow",
]
