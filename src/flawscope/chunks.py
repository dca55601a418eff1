"""Running a network over a large batch a few rows at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def in_passes(function: Callable[[torch.Tensor], Any], inputs: torch.Tensor, rows: int) -> Any:
    """``function`` over ``rows`` rows of ``inputs`` at a time, its outputs (a tensor, or a tuple / list of
    them) concatenated along the first dimension -- and in one pass while a graph is exported, so the graph
    takes any batch size (:mod:`flawscope.export`)."""
    if torch.compiler.is_exporting() or inputs.shape[0] <= rows:
        return function(inputs)
    outputs = [function(chunk) for chunk in inputs.split(rows)]
    if isinstance(outputs[0], (tuple, list)):
        return type(outputs[0])(torch.cat(parts) for parts in zip(*outputs))
    return torch.cat(outputs)


__all__ = ["in_passes"]
