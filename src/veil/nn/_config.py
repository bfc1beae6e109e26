"""Argument checks and the config round trip shared by layers, losses and optimizers.

Every check raises `SpecError` with a Keras-style message: what was expected, then
`Received: name=value`. Nothing here imports torch: the spec is pure Python.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, Self

from veil._exceptions import SpecError

__all__ = [
    "ACTIVATIONS",
    "CONSTANT_LIMIT",
    "Configurable",
    "Shape",
    "check_activation",
    "check_constant",
    "check_float",
    "check_input_shape",
    "check_int",
    "check_pair",
    "deserialize",
    "format_shape",
    "serialize",
]

Shape = tuple[int | None, ...]
"""A full shape, batch axis first and `None`: `(None, 1, 28, 28)`."""

ACTIVATIONS: tuple[str, ...] = ("relu", "sigmoid", "tanh", "softmax", "leaky_relu")


def format_shape(shape: Sequence[int | None]) -> str:
    """`(None, 1, 28, 28)`: how every message shows a shape."""
    inner = ", ".join("None" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(owner: str, name: str, value: object, *, minimum: int = 1) -> int:
    if not _is_int(value) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise SpecError(f"{owner} expects {name} of {what}. Received: {name}={_short(value)}")
    return int(value)


def check_pair(owner: str, name: str, value: object, *, minimum: int = 1) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum; a JSON list is accepted for the pair."""
    what = "positive ints" if minimum == 1 else f"ints >= {minimum}"
    if _is_int(value) and value >= minimum:
        return (int(value), int(value))
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(_is_int(v) and v >= minimum for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise SpecError(
        f"{owner} expects {name} of two {what} (or one for both sides). Received: {name}={value!r}"
    )


def _short(value: object) -> str:
    """`value`'s repr, cut to 40 characters (a JSON integer may have thousands of digits)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def check_float(
    owner: str,
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number inside [low, high] (or the open ends asked for)."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (isinstance(value, int) or math.isfinite(value))  # an int may pass float's range
        and (low is None or (value > low if low_open else value >= low))
        and (high is None or (value < high if high_open else value <= high))
    )
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        what = f"a finite number {bounds}".rstrip()
        raise SpecError(f"{owner} expects {name} of {what}. Received: {name}={_short(value)}")
    return float(value)


# Public model constants (Rescaling, Normalization) stay in a range where float32 keeps
# them meaningful. Stacked layers can still overflow; training and releases give such
# rows a fixed contribution rather than failing, so overflow reveals nothing either.
CONSTANT_LIMIT = 1e6


def check_constant(owner: str, name: str, value: object, *, positive: bool = False) -> float:
    """A model constant: |value| <= CONSTANT_LIMIT, and >= 1/CONSTANT_LIMIT if positive."""
    if positive:
        return check_float(owner, name, value, low=1 / CONSTANT_LIMIT, high=CONSTANT_LIMIT)
    return check_float(owner, name, value, low=-CONSTANT_LIMIT, high=CONSTANT_LIMIT)


def check_activation(owner: str, value: object) -> str | None:
    if value is None or (isinstance(value, str) and value in ACTIVATIONS):
        return value
    raise SpecError(
        f"{owner} expects activation of None or one of {list(ACTIVATIONS)}. "
        f"Received: activation={value!r}"
    )


def check_input_shape(owner: str, value: object) -> Shape | None:
    """`None`, or `(None, d1, ...)` with 1 to 3 positive ints after the batch axis."""
    if value is None:
        return None
    if (
        isinstance(value, list | tuple)
        and 2 <= len(value) <= 4
        and value[0] is None
        and all(_is_int(d) and d >= 1 for d in value[1:])
    ):
        return (None, *(int(d) for d in value[1:]))
    raise SpecError(
        f"{owner} expects input_shape of the form (None, d1, ...): the batch axis first as "
        f"None, then 1 to 3 positive ints, e.g. (None, 1, 28, 28) or (None, 30). "
        f"Received: input_shape={value!r}"
    )


class Configurable:
    """Base of layers, losses and optimizers: `get_config()` / `from_config()`.

    A config holds JSON types only (lists, not tuples), and
    `type(obj).from_config(obj.get_config()).get_config() == obj.get_config()`.
    """

    @property
    def name(self) -> str:
        return type(self).__name__

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        if not isinstance(config, Mapping):
            raise SpecError(
                f"{cls.__name__} expects its config as a dict. "
                f"Received: config of type {type(config).__name__}"
            )
        params = [
            p
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        allowed = {p.name for p in params}
        unknown = sorted(str(k) for k in config if k not in allowed)
        if unknown:
            raise SpecError(
                f"{cls.__name__} expects config keys from {sorted(allowed)}. "
                f"Received unknown keys: {unknown}"
            )
        missing = sorted(p.name for p in params if p.default is p.empty and p.name not in config)
        if missing:
            raise SpecError(
                f"{cls.__name__} expects config keys {missing}, which are required. "
                f"Received: {sorted(str(k) for k in config)}"
            )
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.get_config() == other.get_config()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))


def serialize(obj: Configurable) -> dict[str, Any]:
    """`{"class_name": ..., "config": {...}}`: the form that travels in a spec."""
    return {"class_name": type(obj).__name__, "config": obj.get_config()}


def deserialize(
    kind: str,
    registry: Mapping[str, type[Configurable]],
    data: object,
    *,
    refused: Mapping[str, str] | None = None,
) -> Configurable:
    """Rebuild one object from `{"class_name", "config"}`, whitelisted by `registry`."""
    if not isinstance(data, Mapping) or set(data) - {"class_name", "config"}:
        keys = sorted(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
        raise SpecError(f"A {kind} is a dict with keys 'class_name' and 'config'. Received: {keys}")
    name = data.get("class_name")
    if refused and isinstance(name, str) and name in refused:
        raise SpecError(refused[name])
    if not isinstance(name, str) or name not in registry:
        raise SpecError(
            f"Unknown {kind} class_name. Allowed: {sorted(registry)}. Received: class_name={name!r}"
        )
    return registry[name].from_config(data.get("config", {}))
