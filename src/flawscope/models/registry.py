"""The registry of detectors: one :class:`ModelEntry` per method, made by :func:`register_detector`.

An entry carries what tools and tests need to know about a method without ``hasattr`` probing:
its class, a one-line summary, small parameters for fast tests and smoke runs, and its
capabilities (:data:`CAPABILITIES`). A method module registers itself at its end; importing
:mod:`flawscope.models` imports every method module.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from flawscope.errors import ConfigError

if TYPE_CHECKING:
    from flawscope.models.base import Detector

SUPERVISED = "supervised"
QUANTIZABLE = "quantizable"
UPDATABLE = "updatable"
CAPABILITIES = {
    SUPERVISED: "learns from labelled good and defective images (a classifier), not from good images only",
    QUANTIZABLE: "quantize(images) turns a fitted float32 model into an int8 one without training again",
    UPDATABLE: "update(images) adds good images to a fitted model without fitting it again",
}


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one method."""

    name: str
    detector: type[Detector]
    test_params: Mapping[str, Any] = field(default_factory=dict)
    capabilities: frozenset[str] = frozenset()

    @property
    def summary(self) -> str:
        """The first line of the class docstring, as plain text."""
        first = (self.detector.__doc__ or "").strip().splitlines()[0]
        return re.sub(r"``([^`]*)``", r"\1", first)

    @property
    def parameters(self) -> list[str]:
        """Names of the constructor parameters."""
        return self.detector.param_names()

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities


_REGISTRY: dict[str, ModelEntry] = {}


def register_detector(
    name: str,
    detector: type[Detector],
    *,
    test_params: Mapping[str, Any],
    capabilities: Iterable[str] = (),
) -> ModelEntry:
    """Make ``detector`` reachable as ``fs.create(name)``.

    ``test_params`` are settings small enough for a test to fit the method in about a second on
    synthetic 96 px images; ``capabilities`` are names from :data:`CAPABILITIES`.
    """
    if name in _REGISTRY and _REGISTRY[name].detector is not detector:
        raise ConfigError(f"A detector named {name!r} is registered already ({_REGISTRY[name].detector.__name__}).")
    unknown = sorted(set(capabilities) - set(CAPABILITIES))
    if unknown:
        raise ConfigError(f"Unknown capabilities {unknown} for {name!r}; known: {sorted(CAPABILITIES)}.")
    bad_params = sorted(set(test_params) - set(detector.param_names()))
    if bad_params:
        raise ConfigError(f"test_params of {name!r} name no parameters of {detector.__name__}: {bad_params}.")
    entry = ModelEntry(name, detector, MappingProxyType(dict(test_params)), frozenset(capabilities))
    detector.name = name
    detector.capabilities = entry.capabilities
    _REGISTRY[name] = entry
    return entry


def list_models(pattern: str = "*", capability: str | None = None) -> list[str]:
    """Registered detector names matching the fnmatch ``pattern`` (and having ``capability``), sorted."""
    return sorted(
        name
        for name, entry in _REGISTRY.items()
        if fnmatch.fnmatch(name, pattern) and (capability is None or entry.supports(capability))
    )


def model_entry(name: str) -> ModelEntry:
    """The entry registered as ``name``; unknown names list what exists and the closest match."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown model {name!r}.{hint} Registered models: {', '.join(list_models())}.")
    return _REGISTRY[name]


def preset_params(name: str, preset: str) -> dict[str, Any]:
    """The parameters of method ``name``'s named preset (its ``presets``, e.g. PatchCore's ``fast``)."""
    presets = model_entry(name).detector.presets
    if preset not in presets:
        offered = f"its presets: {sorted(presets)}" if presets else "it has none"
        raise ConfigError(f"{name} has no preset {preset!r}; {offered}.")
    return dict(presets[preset])


def create(name: str, *, preset: str | None = None, **params: Any) -> Detector:
    """Create an unfitted detector by registry name, e.g. ``create("patchcore", coreset_ratio=0.1)``; ``preset``
    names a set of parameters the method offers (``create("patchcore", preset="fast")``), which ``params``
    override."""
    detector = model_entry(name).detector
    if preset is not None:
        params = preset_params(name, preset) | params
    known = set(detector.param_names())
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{detector.__name__} has no parameter(s) {unknown}. Its parameters: {sorted(known)}.")
    return detector.from_params(params)
