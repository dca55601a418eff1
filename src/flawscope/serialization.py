"""Saving and loading detectors: a directory with ``config.json`` and ``model.safetensors``.

``config.json`` holds the format version, the flawscope version that wrote it, the model name,
its constructor parameters, the calibration (rule, threshold, pixel threshold), the backbone
weights fingerprint, the lineage (the fit and every update since, each with the version it was
made from) and the name and shape of every tensor. ``model.safetensors`` holds the
learned tensors. No pickle anywhere. Loading checks the format version, the model name, the
parameters, and every tensor's presence and shape before any is used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from flawscope import __version__
from flawscope.devices import resolve_device
from flawscope.errors import ConfigError, ModelFileError
from flawscope.models.base import Detector
from flawscope.models.registry import create
from flawscope.runtime.metadata import is_exported, read_json_file

FORMAT = "flawscope-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
TENSOR_FILE = "model.safetensors"


def content_hash(directory: str | Path) -> str:
    """A content hash of a model directory: SHA-256 over every file's relative path and bytes (16 hex digits)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def save_detector(detector: Detector, path: str | Path) -> Path:
    """Write ``detector`` (fitted) to the directory ``path`` and return it."""
    detector._check_fitted()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in detector._state_tensors().items()}
    params = detector.get_params()
    _check_json(params)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "flawscope_version": __version__,
        "model": detector.name,
        "params": params,
        "meta": detector._state_meta(),
        "calibration": detector._calibration_state(),
        "lineage": getattr(detector, "lineage_", []),
        "tensors": {name: list(tensor.shape) for name, tensor in tensors.items()},
    }
    save_file(tensors, str(path / TENSOR_FILE), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=_tuple_to_list))
    detector.version_ = content_hash(path)
    return path


def load_detector(path: str | Path, device: str | None = None) -> Detector:
    """Load a detector saved by :func:`save_detector`; ``device`` overrides the saved one."""
    path = Path(path)
    config = _read_config(path)
    # JSON has no tuples: sequence parameters (layers, class_weights) come back as the tuples they default to
    params = {key: tuple(value) if isinstance(value, list) else value for key, value in config["params"].items()}
    if device is not None:
        params["device"] = device
    try:
        detector = create(config["model"], **params)
        detector._validate()
    except ConfigError as error:
        raise ModelFileError(f"{path / CONFIG_FILE}: {error}") from error
    tensors = _read_tensors(path, config["tensors"])
    detector.device_ = resolve_device(detector.device)
    try:
        detector._restore(tensors, config["meta"])
        detector._restore_calibration(config["calibration"])
    except ModelFileError as error:
        raise ModelFileError(f"{path / TENSOR_FILE} does not fit {path / CONFIG_FILE}: {error}") from None
    except KeyError as error:
        raise ModelFileError(
            f"{path} is incomplete: a {detector.name} needs {error.args[0]!r}, which neither {CONFIG_FILE} "
            f"nor {TENSOR_FILE} holds."
        ) from None
    detector.lineage_ = config.get("lineage", [])  # absent in models of flawscope 0.1
    detector.version_ = content_hash(path)
    return detector


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / CONFIG_FILE
    absent = f"{path} is not a saved flawscope model: {CONFIG_FILE} is missing."
    if is_exported(path):
        absent += " It is an exported model: run it with flawscope.runtime.load (or 'flawscope predict')."
    config = read_json_file(config_path, absent)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelFileError(f'{config_path} is not a flawscope model configuration (no "format": "{FORMAT}").')
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by flawscope {config.get('flawscope_version', '?')} in model format version "
            f"{config.get('format_version')}; this flawscope ({__version__}) reads format version {FORMAT_VERSION}. "
            "Re-fit the model with this version, or load it with the version that wrote it."
        )
    missing = [key for key in ("model", "params", "meta", "calibration", "tensors") if key not in config]
    if missing:
        raise ModelFileError(f"{config_path} lacks the keys {missing}.")
    return config


def _read_tensors(path: Path, expected: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    tensor_path = path / TENSOR_FILE
    if not tensor_path.is_file():
        raise ModelFileError(f"{path} is not a complete flawscope model: {TENSOR_FILE} is missing.")
    try:
        tensors = load_file(str(tensor_path))
    except Exception as error:  # safetensors raises several types for damaged files
        raise ModelFileError(f"{tensor_path} cannot be read ({error}); the file is damaged.") from error
    for name, shape in expected.items():
        if name not in tensors:
            raise ModelFileError(f"{tensor_path} lacks the tensor {name!r} that {CONFIG_FILE} lists.")
        if list(tensors[name].shape) != list(shape):
            raise ModelFileError(
                f"{tensor_path}: tensor {name!r} has shape {list(tensors[name].shape)}, {CONFIG_FILE} says {shape}."
            )
    return tensors


def _tuple_to_list(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _check_json(params: dict[str, Any]) -> None:
    for key, value in params.items():
        try:
            json.dumps(value, default=_tuple_to_list)
        except TypeError as error:
            raise ConfigError(f"Parameter {key!r} = {value!r} cannot be saved as JSON.") from error
