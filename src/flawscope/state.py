"""Learned tensors in and out of a saved model, checked: the one place a method's ``_state_tensors``
and ``_restore`` turn sub-networks and arrays into named tensors and back.

Every mismatch -- a tensor missing, unexpected or of another shape -- raises
:class:`~flawscope.errors.ModelFileError`; :func:`flawscope.serialization.load_detector` adds
the file's path to the message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch
from torch import nn

from flawscope.errors import ModelFileError

Module = TypeVar("Module", bound=nn.Module)


def module_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """The state of ``module`` as tensors named ``prefix.<key>``."""
    return {f"{prefix}.{key}": value for key, value in module.state_dict().items()}


def tensors_under(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named ``prefix.<key>``, as ``{key: tensor}``."""
    return {key.removeprefix(f"{prefix}."): value for key, value in tensors.items() if key.startswith(f"{prefix}.")}


def restore_module(module: Module, tensors: Mapping[str, torch.Tensor], prefix: str) -> Module:
    """Load the tensors named ``prefix.<key>`` into ``module`` (strictly: every key, every shape); returns it."""
    state = tensors_under(tensors, prefix)
    if not state:
        raise ModelFileError(f"it holds no tensors of the {prefix!r} network.")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFileError(f"its {prefix!r} network does not fit the model's parameters: {error}") from None
    return module


def checked_tensor(
    tensors: Mapping[str, torch.Tensor], name: str, shape: Sequence[int | None] | None = None
) -> torch.Tensor:
    """The tensor ``name``, with ``shape`` checked (``None`` entries match any size)."""
    if name not in tensors:
        raise ModelFileError(f"it lacks the tensor {name!r}.")
    tensor = tensors[name]
    if shape is not None and (
        tensor.ndim != len(shape) or any(want is not None and have != want for have, want in zip(tensor.shape, shape))
    ):
        wanted = tuple("any" if want is None else want for want in shape)
        raise ModelFileError(
            f"its tensor {name!r} has shape {tuple(tensor.shape)}; the model's parameters need {wanted}."
        )
    return tensor
