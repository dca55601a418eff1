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

import logging

__version__ = "0.1.0"

from flawscope import (
    datasets,
    workflow,
)
from flawscope import models as _models  # noqa: F401  (registers the detectors)
from flawscope.errors import (
    CalibrationWarning,
    ConfigError,
    DataError,
    FlawscopeError,
    ModelFileError,
    NotFittedError,
    WeightsError,
)
from flawscope.models.base import Detector
from flawscope.models.registry import create, list_models, model_entry
from flawscope.results import Prediction

logging.getLogger("flawscope").addHandler(logging.NullHandler())


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
    "workflow",
]
