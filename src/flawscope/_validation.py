"""Parameter constraints in scikit-learn's style, checked in ``fit`` and turned into ConfigError messages."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flawscope.errors import ConfigError

_BRACKETS = {"both": ("[", "]"), "left": ("[", ")"), "right": ("(", "]"), "neither": ("(", ")")}


@dataclass(frozen=True)
class Interval:
    """A real or integral number between ``low`` and ``high`` (None = unbounded)."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        number = float(value)
        left, right = _BRACKETS[self.closed]
        if self.low is not None and (number < self.low or (left == "(" and number == self.low)):
            return False
        return self.high is None or not (number > self.high or (right == ")" and number == self.high))

    def describe(self) -> str:
        left, right = _BRACKETS[self.closed]
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        return f"{'an int' if self.kind is int else 'a float'} in {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        return value in self.values

    def describe(self) -> str:
        return "a str among {" + ", ".join(repr(v) for v in self.values) + "}"


@dataclass(frozen=True)
class Check:
    """Any predicate with a description, e.g. 'None' or 'a non-empty sequence of ints'."""

    predicate: Callable[[Any], bool]
    description: str

    def accepts(self, value: Any) -> bool:
        return bool(self.predicate(value))

    def describe(self) -> str:
        return self.description


Constraint = Interval | Options | Check
Constraints = dict[str, list[Constraint]]

NONE = Check(lambda v: v is None, "None")
STRING = Check(lambda v: isinstance(v, str) and bool(v), "a non-empty str")
BOOLEAN = Check(lambda v: isinstance(v, bool), "a bool")


def int_sequence(minimum: int = 0) -> Check:
    """A non-empty sequence of distinct, increasing ints >= ``minimum``."""

    def accepts(value: Any) -> bool:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
            return False
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= minimum for v in value):
            return False
        return list(value) == sorted(set(value))

    return Check(accepts, f"a non-empty increasing sequence of distinct ints >= {minimum}")


def validate_params(owner: str, params: dict[str, Any], constraints: Constraints) -> None:
    """Raise :class:`ConfigError` for the first parameter that meets none of its constraints."""
    for name, allowed in constraints.items():
        value = params[name]
        if not any(constraint.accepts(value) for constraint in allowed):
            options = " or ".join(constraint.describe() for constraint in allowed)
            raise ConfigError(f"The {name!r} parameter of {owner} must be {options}. Got {value!r} instead.")
