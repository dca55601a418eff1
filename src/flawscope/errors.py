"""Exceptions raised by flawscope. Every one carries a message that says what went wrong and how to fix it."""

from __future__ import annotations


class FlawscopeError(Exception):
    """Base class of every error flawscope raises on purpose."""


class DataError(FlawscopeError, ValueError):
    """An image, mask or dataset folder that cannot be used; the message names the file."""


class ConfigError(FlawscopeError, ValueError):
    """A parameter value or combination that a detector cannot honour."""


class WeightsError(FlawscopeError, RuntimeError):
    """Backbone weights that cannot be found, read or matched to the architecture."""


class ModelFileError(FlawscopeError, ValueError):
    """A saved model directory that is missing, damaged or written by an incompatible version."""


class NotFittedError(FlawscopeError, AttributeError):
    """A detector used before ``fit`` (or ``calibrate``) was called.

    Subclasses ``AttributeError`` as scikit-learn's ``NotFittedError`` does, so existing
    ``except`` clauses keep working.

    Examples
    --------
    >>> import flawscope as fs
    >>> try:
    ...     fs.create("patchcore").predict([])
    ... except fs.NotFittedError as error:
    ...     print(str(error).split(".")[0])
    This PatchCore instance is not fitted yet
    """


class CalibrationWarning(UserWarning):
    """A threshold set on fewer calibration images than its rule needs to be trusted."""
