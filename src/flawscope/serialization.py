"""Saving and loading detectors: a directory with ``config.json`` and ``model.safetensors``.

``config.json`` holds the format version, the flawscope version that wrote it, the model name,
its constructor parameters, the calibration (rule, threshold, pixel threshold), the backbone
weights fingerprint, the lineage (the fit and every update since, each with the version it was
made from) and the name and shape of every tensor. ``model.safetensors`` holds the
learned tensors. No pickle anywhere. Loading checks the format version, the model name, the
parameters, and every tensor's presence and shape before any is used.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import math
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from flawscope import __version__
from flawscope.devices import resolve_device
from flawscope.errors import ConfigError, FlawscopeError, ModelFileError, WeightsError
from flawscope.models.base import Detector
from flawscope.models.registry import create
from flawscope.runtime.metadata import is_exported, read_json_file

FORMAT = "flawscope-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
TENSOR_FILE = "model.safetensors"
_AT_FDCWD = -100  # renameat2: paths relative to the working directory
_RENAME_EXCHANGE = 2


def content_hash(directory: str | Path) -> str:
    """A content hash of a model directory: SHA-256 over every file's relative path and bytes (16 hex digits)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def save_detector(detector: Detector, path: str | Path) -> Path:
    """Write ``detector`` (fitted) to the directory ``path`` and return it.

    The save is atomic: the model is written to a hidden directory beside ``path``, flushed to disk, and swapped
    into place in one step, so a process killed (or a machine losing power) in the middle leaves ``path`` as it
    was -- the previous model, intact and loadable -- or the new one, never a mixture. ``path`` must be new, an
    empty directory or a saved model; a directory holding other files is refused instead of replaced.
    """
    detector._check_fitted()
    path = Path(path)
    _check_target(path)
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
        "dtypes": {name: str(tensor.dtype).removeprefix("torch.") for name, tensor in tensors.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_saves(path)
    staging = path.parent / f".{path.name}.saving-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        # one metadata key: safetensors writes several in a random order, and the same model must hash the same
        save_file(tensors, str(staging / TENSOR_FILE), metadata={"format": FORMAT})
        config["tensor_sha256"] = _file_sha256(staging / TENSOR_FILE)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=_tuple_to_list))
        version = content_hash(staging)
        _flush(staging)
        _swap_into_place(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap: the previous model
    detector.version_ = version
    return path


def _check_target(path: Path) -> None:
    """ModelFileError unless ``path`` is new, an empty directory or a saved model (which a save replaces)."""
    if not path.exists():
        return
    if not path.is_dir():
        raise ModelFileError(f"Cannot save a model to {path}: it is a file, not a directory.")
    others = sorted(item.name for item in path.iterdir() if item.name not in (CONFIG_FILE, TENSOR_FILE))
    if others:
        raise ModelFileError(
            f"Cannot save a model to {path}: it holds files that are not a saved model's ({', '.join(others[:5])}), "
            "which saving would replace. Save into a new or empty directory, or over a saved model."
        )


def _flush(directory: Path) -> None:
    """Force the files of ``directory`` and the directory itself to disk, so a power cut cannot undo them."""
    for item in directory.iterdir():
        with open(item, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _swap_into_place(staging: Path, path: Path) -> None:
    """Put the directory ``staging`` at ``path`` in one step; whatever was at ``path`` ends at ``staging``.

    A new or empty ``path`` is replaced by a rename. An existing model is exchanged with ``renameat2``'s
    ``RENAME_EXCHANGE`` (Linux); where the system lacks it, the old model is renamed aside first -- then a
    process killed between the two renames leaves the previous model at ``.<name>.saving-...`` beside ``path``,
    which :func:`load_detector` names when ``path`` is missing.
    """
    if not path.exists() or not any(path.iterdir()):
        os.replace(staging, path)
    elif not _exchange(staging, path):
        aside = staging.with_name(staging.name + "-previous")
        os.replace(path, aside)
        os.replace(staging, path)
        os.replace(aside, staging)
    _fsync_directory(path.parent)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without the exchange
        return False
    raise OSError(code, os.strerror(code), str(second))


def _remove_abandoned_saves(path: Path) -> None:
    """Remove the staging directories of saves to ``path`` by processes that no longer run (killed mid-save)."""
    for staging in path.parent.glob(f".{path.name}.saving-*"):
        pid = staging.name.removeprefix(f".{path.name}.saving-").split("-")[0]
        if pid.isdigit() and not _is_running(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_detector(path: str | Path, device: str | None = None) -> Detector:
    """Load a detector saved by :func:`save_detector`; ``device`` overrides the saved one.

    Anything damaged or edited -- a config value of the wrong type or out of range, a tensor file that does not
    match the checksum, the shapes or the dtypes ``config.json`` records, a missing piece -- raises
    :class:`ModelFileError` naming the file and what is wrong, before the model is used.
    """
    path = Path(path)
    config = _read_config(path)
    config_path = path / CONFIG_FILE
    # JSON has no tuples: sequence parameters (layers, class_weights) come back as the tuples they default to
    params: dict[str, Any] = {
        key: tuple(value) if isinstance(value, list) else value for key, value in config["params"].items()
    }
    if device is not None:
        params["device"] = device
    try:
        detector = create(config["model"], **params)
        detector._validate()
        detector.device_ = resolve_device(detector.device)
    except (ConfigError, TypeError, AttributeError) as error:  # a parameter edited to a value of the wrong type
        raise ModelFileError(f"{config_path}: {error}") from error
    calibration = _checked_calibration(config["calibration"], config_path)
    tensors = _read_tensors(path, config)
    try:
        detector._restore(tensors, config["meta"])
        detector._restore_calibration(calibration)
    except ModelFileError as error:
        raise ModelFileError(f"{path / TENSOR_FILE} does not fit {config_path}: {error}") from None
    except KeyError as error:
        raise ModelFileError(
            f"{path} is incomplete: a {detector.name} needs {error.args[0]!r}, which neither {CONFIG_FILE} "
            f"nor {TENSOR_FILE} holds."
        ) from None
    except WeightsError as error:  # the backbone weights found now are not those the model was fitted with
        raise WeightsError(f"{path}: {error}") from None
    except FlawscopeError:
        raise
    except (TypeError, ValueError, AttributeError, IndexError, RuntimeError) as error:  # an edited meta value
        raise ModelFileError(f"{config_path} holds a value a {detector.name} cannot use ({error}).") from None
    _score_a_probe(detector, path)
    detector.lineage_ = config.get("lineage", [])  # absent in models of flawscope 0.1
    detector.version_ = content_hash(path)
    return detector


def _score_a_probe(detector: Detector, path: Path) -> None:
    """Score one grey image at the model's input size: parameters edited to values its tensors were not made for
    (an image size, a layer) fail here, at load, as a ModelFileError -- not later, at the first part on the line."""
    height, width = detector._probe_size()
    try:
        [(score, anomaly_map)] = detector._score_pixels([np.full((height, width, 3), 0.5, np.float32)])
    except WeightsError as error:
        raise WeightsError(f"{path}: {error}") from None
    except FlawscopeError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError) as error:
        raise ModelFileError(
            f"{path / CONFIG_FILE} and {path / TENSOR_FILE} do not fit together: scoring a test image fails ({error})."
        ) from None
    if not (math.isfinite(score) and np.isfinite(anomaly_map).all()):
        raise ModelFileError(
            f"{path / CONFIG_FILE} and {path / TENSOR_FILE} do not fit together: a test image scores NaN or inf."
        )


def _checked_calibration(calibration: Any, config_path: Path) -> dict[str, Any]:
    """The saved calibration when its thresholds are finite numbers (or both absent); ModelFileError otherwise."""
    if not isinstance(calibration, dict) or not isinstance(calibration.get("calibration", {}), dict):
        raise ModelFileError(f'{config_path}: "calibration" must be an object with an object "calibration".')
    thresholds = [calibration.get("threshold"), calibration.get("pixel_threshold")]
    if thresholds == [None, None]:
        return calibration
    if not all(_is_finite_number(value) for value in thresholds):
        raise ModelFileError(
            f"{config_path}: the thresholds must be finite numbers (or both null for an uncalibrated model); "
            f"threshold = {thresholds[0]!r}, pixel_threshold = {thresholds[1]!r}."
        )
    return calibration


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / CONFIG_FILE
    absent = f"{path} is not a saved flawscope model: {CONFIG_FILE} is missing."
    interrupted = sorted(path.parent.glob(f".{path.name}.saving-*")) if not path.exists() else []
    if interrupted:
        absent += f" A save to it was interrupted: the model it held (or the one being saved) is in {interrupted[-1]}."
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
    expected_types = {"model": str, "params": dict, "meta": dict, "calibration": dict, "tensors": dict}
    expected_types |= {"dtypes": dict, "tensor_sha256": str, "lineage": list}
    for key, kind in expected_types.items():
        if key in config and not isinstance(config[key], kind):
            raise ModelFileError(f'{config_path}: "{key}" must be a {kind.__name__} JSON value, not {config[key]!r}.')
    for name, shape in config["tensors"].items():
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
            raise ModelFileError(f'{config_path}: the shape of tensor "{name}" must be a list of whole numbers.')
    return config


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_tensors(path: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    tensor_path = path / TENSOR_FILE
    if not tensor_path.is_file():
        raise ModelFileError(f"{path} is not a complete flawscope model: {TENSOR_FILE} is missing.")
    checksum = config.get("tensor_sha256")  # absent in models of flawscope 0.1
    if checksum is not None and _file_sha256(tensor_path) != checksum:
        raise ModelFileError(
            f"{tensor_path} is not the file {CONFIG_FILE} was saved with (its SHA-256 differs): it was damaged or "
            "edited. Use the model as it was saved, or save it again."
        )
    try:
        tensors = load_file(str(tensor_path))
    except Exception as error:  # safetensors raises several types for damaged files
        raise ModelFileError(f"{tensor_path} cannot be read ({error}); the file is damaged.") from error
    dtypes = config.get("dtypes", {})
    for name, shape in config["tensors"].items():
        if name not in tensors:
            raise ModelFileError(f"{tensor_path} lacks the tensor {name!r} that {CONFIG_FILE} lists.")
        if list(tensors[name].shape) != list(shape):
            raise ModelFileError(
                f"{tensor_path}: tensor {name!r} has shape {list(tensors[name].shape)}, {CONFIG_FILE} says {shape}."
            )
        dtype = str(tensors[name].dtype).removeprefix("torch.")
        if name in dtypes and dtype != dtypes[name]:
            raise ModelFileError(f"{tensor_path}: tensor {name!r} is {dtype}, {CONFIG_FILE} says {dtypes[name]}.")
    return tensors


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
