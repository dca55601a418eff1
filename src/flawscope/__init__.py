"""flawscope: visual anomaly detection for industrial inspection.

>>> import flawscope as fs
>>> fs.list_models()
['patchcore']
"""

__version__ = "0.1.0"

from flawscope import datasets
from flawscope import models as _models  # noqa: F401  (registers the detectors)
from flawscope.errors import (
    ConfigError,
    DataError,
    FlawscopeError,
    ModelFileError,
    NotFittedError,
    WeightsError,
)
from flawscope.models.base import Detector, Prediction, create, list_models


def load(path, device=None) -> Detector:
    """Load a model saved with ``model.save(path)``."""
    from flawscope.serialization import load_detector

    return load_detector(path, device)


def evaluate(model: Detector, data, **kwargs):
    """Score a labelled dataset and compute the metrics; see :func:`flawscope.evaluation.evaluate`."""
    from flawscope.evaluation import evaluate as _evaluate

    return _evaluate(model, data, **kwargs)


__all__ = [
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
]
