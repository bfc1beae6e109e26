"""Declared bounds: where an asset's values lie, as its owner says at upload. Public.

One `(low, high)` for every value, or one pair per channel (axis 1: a column of a table,
a colour channel of an image), so that features of very different scales each keep a
useful range (Wisconsin's areas run to thousands, its smoothness below 0.2). The upload
refuses values outside them; mocks are drawn inside them; releases that need to know
how far one row can move a statistic (`Normalization.adapt`) rely on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from veil._exceptions import ValidationError
from veil.server.storage.staging import Limits

__all__ = ["Bounds", "mid_half"]


def mid_half(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre, half-width) of float64 bounds, finite for any finite bounds: a float64
    asset may declare the whole of float64, whose width `high - low` overflows."""
    return low / 2 + high / 2, high / 2 - low / 2


def _floats(value: object) -> tuple[float, ...] | None:
    """A number as a 1-tuple, a list of numbers as a tuple; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return (float(value),)
    listed = isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
    if listed and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)
    return None


@dataclass(frozen=True)
class Bounds:
    """`low` and `high` each hold one value (for all channels) or one per channel."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def parse(cls, value: object, *, dtype: np.dtype, shape: tuple[int, ...], what: str) -> Bounds:
        """Check a declaration: `(low, high)` numbers, or lists of one per channel."""
        expected = f"{what}: bounds must be (low, high), numbers or lists of one per channel"
        if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
            raise ValidationError(f"{expected}. Received: {value!r}")
        low, high = _floats(value[0]), _floats(value[1])
        if low is None or high is None:
            raise ValidationError(f"{expected}. Received: {value!r}")
        channels = shape[1] if len(shape) > 1 else 1
        for side in (low, high):
            if len(side) not in (1, channels) or (len(side) > 1 and len(shape) < 2):
                raise ValidationError(
                    f"{expected} (axis 1 has {channels}). Received: {len(side)} values"
                )
        if len(low) != len(high) and 1 not in (len(low), len(high)):
            raise ValidationError(f"{expected}. Received: {len(low)} lows, {len(high)} highs")
        bounds = cls(low, high)
        bounds._check_range(dtype, what)
        return bounds

    def _check_range(self, dtype: np.dtype, what: str) -> None:
        if dtype.kind == "f":
            bottom, top = float(np.finfo(dtype).min), float(np.finfo(dtype).max)
        elif dtype.kind == "b":
            bottom, top = 0.0, 1.0
        else:
            bottom, top = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
        low, high = self.arrays(max(len(self.low), len(self.high)))
        ordered = bool((low >= bottom).all() and (low <= high).all() and (high <= top).all())
        if not (np.isfinite(low).all() and np.isfinite(high).all() and ordered):
            raise ValidationError(
                f"{what}: bounds must be finite, low <= high, within the range of {dtype.name}. "
                f"Received: {self.describe()}"
            )
        if dtype.kind != "f" and bool((np.ceil(low) > np.floor(high)).any()):
            raise ValidationError(f"{what}: bounds hold no integer. Received: {self.describe()}")

    def arrays(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(low, high), one float64 per channel."""
        return (
            np.broadcast_to(np.asarray(self.low, dtype=np.float64), (channels,)),
            np.broadcast_to(np.asarray(self.high, dtype=np.float64), (channels,)),
        )

    def limits(self) -> Limits:
        """What the upload's value check needs."""
        return Limits(
            low=np.asarray(self.low, dtype=np.float64),
            high=np.asarray(self.high, dtype=np.float64),
            text=self.describe(),
        )

    @property
    def overall(self) -> tuple[float, float]:
        """The range every value lies in, whatever its channel."""
        return min(self.low), max(self.high)

    @property
    def per_channel(self) -> bool:
        return max(len(self.low), len(self.high)) > 1

    def to_json(self) -> list[float | list[float]]:
        def side(values: tuple[float, ...]) -> float | list[float]:
            return values[0] if len(values) == 1 else list(values)

        return [side(self.low), side(self.high)]

    @classmethod
    def from_json(cls, data: Sequence[object] | None) -> Bounds | None:
        if data is None:
            return None
        low, high = _floats(data[0]), _floats(data[1])
        if low is None or high is None:
            raise ValueError(f"stored bounds are not numbers: {data!r}")
        return cls(low, high)

    def describe(self) -> str:
        def side(values: tuple[float, ...]) -> str:
            if len(values) == 1:
                return f"{values[0]:g}"
            more = ", ..." if len(values) > 4 else ""
            return "[" + ", ".join(f"{v:g}" for v in values[:4]) + more + "]"

        return f"[{side(self.low)}, {side(self.high)}]"
