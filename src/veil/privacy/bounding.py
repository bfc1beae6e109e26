"""Bounding private per-row values before noise: what makes a release's sensitivity true.

Releases on rows the data scientist chose (a step's batch, held-out rows, evaluation
rows) use zero-out adjacency: the neighbouring dataset has one row replaced by a null
row that contributes zero. Hence

- `MeanOf(high, fill)`: one scalar per row, clipped to [0, high], averaged over the
  public row count n; its sensitivity is high / n.
- `EachRow(norm)`: every row's values, each row clipped to L2 norm `norm`; released row
  by row, one row changes one row, so the sensitivity is `norm`.
- `MeanOfRows(norm)`: a vector per row, clipped to L2 norm `norm`, averaged over the
  public row count n; its sensitivity is norm / n.

A value that is NaN or infinite (a model can make one on purpose) becomes a fixed
value taken from the bound alone (`fill`, or a zero row), and every row goes through
the same array operations, so neither the released value nor the time it takes
branches on which rows were not finite. `release_value` then adds the noise and snaps.

Where one person (a data subject) may own several rows, `groups` names each row's
subject and every bound applies to a subject's rows together: the total of its scalars
is clipped to [0, high], its rows' joint L2 norm to `norm`, so one subject still moves
the release by at most the sensitivity (over the public row count n, for means).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from veil._exceptions import ValidationError
from veil.privacy.grouping import SubjectOrder
from veil.privacy.noise import MIN_STD, SecureNoise, snap

__all__ = [
    "Bound",
    "EachRow",
    "MeanOf",
    "MeanOfRows",
    "Released",
    "bound_from_dict",
    "release_value",
]


def _positive(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValidationError(f"{owner} expects {name} of a number. Received: {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValidationError(f"{owner} expects a finite {name} > 0. Received: {name}={value!r}")
    return float(value)


def _rows(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValidationError(
            f"Expected per-row values with at least one row. Received: shape {array.shape}"
        )
    return array


@dataclass(frozen=True)
class MeanOf:
    """The mean of one scalar per row, each clipped to [0, high]; non-finite -> fill."""

    high: float
    fill: float

    def __post_init__(self) -> None:
        high = _positive("MeanOf", "high", self.high)
        if not (isinstance(self.fill, numbers.Real) and 0 <= self.fill <= high):
            raise ValidationError(
                f"MeanOf expects fill in [0, high={high}]. Received: fill={self.fill!r}"
            )
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "fill", float(self.fill))

    def bounded(self, values: np.ndarray) -> np.ndarray:
        array = _rows(values)
        if array.ndim != 1:
            raise ValidationError(
                f"MeanOf expects one value per row, shape (n,). Received: shape {array.shape}"
            )
        return np.where(np.isfinite(array), np.clip(array, 0.0, self.high), self.fill)

    def group(self, bounded: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Each subject's total, clipped to [0, high]."""
        order, count = _subject_order(groups, bounded.shape[0])
        totals = np.bincount(order.numbers, weights=order.gather(bounded), minlength=count)
        return np.clip(totals, 0.0, self.high)

    def aggregate(self, bounded: np.ndarray, n_rows: int) -> np.ndarray:
        return np.asarray(bounded.sum() / n_rows)

    def sensitivity(self, n_rows: int) -> float:
        return self.high / n_rows

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "mean", "high": self.high, "fill": self.fill}


@dataclass(frozen=True)
class EachRow:
    """Each row's values, the row clipped to L2 norm `norm`; a non-finite row -> zeros."""

    norm: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", _positive("EachRow", "norm", self.norm))

    def bounded(self, values: np.ndarray) -> np.ndarray:
        array = _rows(values)
        flat = array.reshape(array.shape[0], -1)
        finite = np.isfinite(flat).all(axis=1, keepdims=True)
        flat = np.where(finite, flat, 0.0)
        # Norms taken on rows scaled by their largest value, so that a huge finite row
        # is clipped along its own direction instead of overflowing to infinity.
        peak = np.abs(flat).max(axis=1, keepdims=True, initial=0.0)
        unit = flat / np.where(peak > 0, peak, 1.0)
        unit_norm = np.sqrt(np.square(unit).sum(axis=1, keepdims=True))
        with np.errstate(over="ignore"):
            too_long = peak * unit_norm > self.norm
        clipped = unit * (self.norm / np.where(unit_norm > 0, unit_norm, 1.0))
        return np.where(too_long, clipped, flat).reshape(array.shape)

    def group(self, bounded: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Each subject's rows scaled together to a joint L2 norm of at most `norm`."""
        flat = bounded.reshape(bounded.shape[0], -1)
        order, count = _subject_order(groups, flat.shape[0])
        squares = order.gather(np.square(flat).sum(axis=1))
        joint = np.sqrt(np.bincount(order.numbers, weights=squares, minlength=count))
        scale = order.scatter((self.norm / np.maximum(joint, self.norm))[order.numbers])
        return (flat * scale[:, None]).reshape(bounded.shape)

    def aggregate(self, bounded: np.ndarray, n_rows: int) -> np.ndarray:
        return bounded

    def sensitivity(self, n_rows: int) -> float:
        return self.norm

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "rows", "norm": self.norm}


@dataclass(frozen=True)
class MeanOfRows:
    """The mean of one vector per row, each row clipped to L2 norm `norm` (a non-finite
    row counts as zeros)."""

    norm: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", _positive("MeanOfRows", "norm", self.norm))

    def bounded(self, values: np.ndarray) -> np.ndarray:
        return EachRow(self.norm).bounded(values)

    def group(self, bounded: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Each subject's summed vector, clipped to L2 norm `norm`."""
        order, count = _subject_order(groups, bounded.shape[0])
        totals = np.zeros((count, bounded.shape[1]))
        np.add.at(totals, order.numbers, order.gather(bounded))
        return EachRow(self.norm).bounded(totals)

    def aggregate(self, bounded: np.ndarray, n_rows: int) -> np.ndarray:
        return bounded.sum(axis=0) / n_rows

    def sensitivity(self, n_rows: int) -> float:
        return self.norm / n_rows

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "mean_rows", "norm": self.norm}


Bound = MeanOf | EachRow | MeanOfRows


def _subject_order(groups: np.ndarray, n_rows: int) -> tuple[SubjectOrder, int]:
    """The rows in subject order (`grouping.SubjectOrder`), and the number of slots to
    sum them in: `n_rows` (public), not the number of subjects the rows hold (private),
    so that a grouped release does the same work whoever owns its rows; the empty slots
    add zero."""
    groups = np.asarray(groups)
    if groups.shape != (n_rows,) or groups.dtype.kind not in "iu":
        raise ValidationError(
            f"Expected one integer subject per row, shape ({n_rows},). "
            f"Received: {groups.dtype} of shape {groups.shape}"
        )
    # Which rows share a subject is private, and a sort's work follows what it is given:
    # `grouping` sorts distinct keys in a random order (from the OS's entropy) instead,
    # and the sums read the rows through it, in subject order.
    shuffled = np.random.default_rng().permutation(n_rows)
    return SubjectOrder.of(groups, shuffled), n_rows


def bound_from_dict(data: Mapping[str, Any]) -> Bound:
    """The inverse of `to_dict()`, with its keys checked."""
    kinds = {
        "mean": (MeanOf, {"kind", "high", "fill"}),
        "rows": (EachRow, {"kind", "norm"}),
        "mean_rows": (MeanOfRows, {"kind", "norm"}),
    }
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if kind not in kinds:
        raise ValidationError(f"A bound has a kind among {sorted(kinds)}. Received: {data!r}")
    cls, keys = kinds[kind]
    if set(data) != keys:
        raise ValidationError(f"A {kind!r} bound has keys {sorted(keys)}. Received: {sorted(data)}")
    return cls(**{k: v for k, v in data.items() if k != "kind"})


@dataclass(frozen=True)
class Released:
    """A noised value and the standard deviation of its noise."""

    value: np.ndarray
    std: float
    sensitivity: float


def release_value(
    values: np.ndarray,
    *,
    bound: Bound,
    sigma: float,
    noise: SecureNoise,
    groups: np.ndarray | None = None,
) -> Released:
    """Bound per-row `values` (by subject, with `groups`), aggregate, add
    N(0, (sigma x sensitivity)^2), snap.

    The result is finite whatever `values` hold: the bounded aggregate is finite and
    the noise std is a finite product of public numbers.
    """
    sigma = _positive("release_value", "sigma", sigma)
    bounded = bound.bounded(values)
    n_rows = bounded.shape[0]
    if groups is not None:
        bounded = bound.group(bounded, groups)
    aggregate = bound.aggregate(bounded, n_rows)
    sensitivity = bound.sensitivity(n_rows)
    std = sigma * sensitivity
    if not math.isfinite(std):
        raise ValidationError(
            f"The noise std sigma x sensitivity = {sigma} x {sensitivity} is not a finite "
            "number; ask for less noise."
        )
    if std < MIN_STD:
        raise ValidationError(
            f"The noise std sigma x sensitivity = {sigma} x {sensitivity} is under {MIN_STD:g}, "
            "too small for floating point to add; ask for more noise or a larger bound."
        )
    noised = snap(aggregate + noise.gaussian(aggregate.shape, std), std)
    return Released(value=noised, std=std, sensitivity=sensitivity)
