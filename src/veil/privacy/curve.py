"""Rényi DP curves: the currency of the ledger and of every cart.

A curve holds one RDP value per order of the fixed grid `ORDERS`. Curves add under
composition, so a ledger is a sum of curves and a publish charges a difference of two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

from veil._exceptions import ValidationError

__all__ = ["ORDERS", "RdpCurve"]

# dp-accounting's default grid, written out so that a library upgrade cannot change the
# meaning of curves already stored in a ledger.
ORDERS: tuple[float, ...] = (
    tuple(1 + x / 10.0 for x in range(1, 100))
    + tuple(float(x) for x in range(11, 64))
    + (128.0, 256.0, 512.0, 1024.0)
)

_ORDERS = np.array(ORDERS, dtype=np.float64)
_ORDERS.flags.writeable = False

# A negative difference this small, relative to what was subtracted, is float noise.
_NEGATIVE_NOISE = 1e-12


def _frozen(values: np.ndarray) -> np.ndarray:
    if values.shape != _ORDERS.shape:
        raise ValidationError(
            f"An RDP curve expects {len(ORDERS)} values, one per order. "
            f"Received: {values.size} values of shape {values.shape}",
            expected=len(ORDERS),
            received=int(values.size),
        )
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValidationError(
            f"An RDP curve expects finite values. Received: {values[bad]} at order {ORDERS[bad]}",
            order=ORDERS[bad],
        )
    if np.any(values < 0):
        bad = int(np.flatnonzero(values < 0)[0])
        raise ValidationError(
            f"An RDP curve expects non-negative values. Received: {values[bad]} "
            f"at order {ORDERS[bad]}",
            order=ORDERS[bad],
            received=float(values[bad]),
        )
    values += 0.0  # -0.0 becomes 0.0, so equal curves hash alike
    values.flags.writeable = False
    return values


class RdpCurve:
    """An immutable RDP curve over `ORDERS`: finite, non-negative float64 values."""

    __slots__ = ("_values",)

    _values: np.ndarray

    def __init__(self, values: npt.ArrayLike) -> None:
        try:
            array = np.array(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                f"An RDP curve expects {len(ORDERS)} numbers. Received: {values!r}"
            ) from exc
        self._values = _frozen(array)

    @classmethod
    def _of(cls, values: np.ndarray) -> RdpCurve:
        """Wrap a fresh float64 array this module owns, checking it without a copy."""
        curve = cls.__new__(cls)
        curve._values = _frozen(values)
        return curve

    @classmethod
    def zero(cls) -> RdpCurve:
        return cls._of(np.zeros_like(_ORDERS))

    @classmethod
    def from_list(cls, values: Sequence[float]) -> RdpCurve:
        """The inverse of `to_list`; checks length, finiteness and sign."""
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise ValidationError(
                f"An RDP curve expects a list of {len(ORDERS)} numbers. "
                f"Received: {type(values).__name__}"
            )
        if len(values) != len(ORDERS):
            raise ValidationError(
                f"An RDP curve expects {len(ORDERS)} values, one per order. "
                f"Received: {len(values)} values",
                expected=len(ORDERS),
                received=len(values),
            )
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise ValidationError(f"An RDP curve expects numbers only. Received: {values!r}")
        return cls(values)

    def to_list(self) -> list[float]:
        return [float(v) for v in self._values]

    @property
    def values(self) -> np.ndarray:
        """The read-only float64 array of RDP values, aligned with `ORDERS`."""
        return self._values

    @property
    def is_zero(self) -> bool:
        return not np.any(self._values)

    def __add__(self, other: RdpCurve) -> RdpCurve:
        if not isinstance(other, RdpCurve):
            return NotImplemented
        return RdpCurve._of(self._values + other._values)

    def __sub__(self, other: RdpCurve) -> RdpCurve:
        """The exact difference, rounded up where it is not representable.

        Rounding up (never down) means `charged + (cart - charged)` is at least `cart`
        at every order, so a publish never under-charges and publishing the same cart
        twice charges zero the second time.
        """
        if not isinstance(other, RdpCurve):
            return NotImplemented
        a, b = self._values, other._values
        diff = a - b
        # Knuth's TwoSum: the exact a - b is diff + err.
        b_virtual = diff - a
        a_virtual = diff - b_virtual
        err = (a - a_virtual) + (-b - b_virtual)
        diff = np.where(err > 0, np.nextafter(diff, np.inf), diff)
        negative = diff < 0
        noise = negative & (-diff <= _NEGATIVE_NOISE * b)
        if np.any(negative & ~noise):
            bad = int(np.flatnonzero(negative & ~noise)[0])
            raise ValidationError(
                "Cannot subtract a larger RDP curve from a smaller one: at order "
                f"{ORDERS[bad]} the result would be {a[bad]} - {b[bad]} = {diff[bad]}",
                order=ORDERS[bad],
                minuend=float(a[bad]),
                subtrahend=float(b[bad]),
            )
        return RdpCurve._of(np.where(diff <= 0, 0.0, diff))

    def __mul__(self, k: int) -> RdpCurve:
        if not isinstance(k, int | np.integer) or isinstance(k, bool):
            return NotImplemented
        if k < 0:
            raise ValidationError(
                f"An RDP curve can be composed a non-negative number of times. Received: {k}"
            )
        return RdpCurve._of(self._values * int(k))

    __rmul__ = __mul__

    def scale(self, k: float) -> RdpCurve:
        """Multiply by a real factor, e.g. a fractional count of releases."""
        if not math.isfinite(k) or k < 0:
            raise ValidationError(f"RdpCurve.scale expects a finite factor >= 0. Received: k={k}")
        return RdpCurve._of(self._values * float(k))

    def maximum(self, other: RdpCurve) -> RdpCurve:
        """The pointwise maximum: the cost of the worse of two alternatives."""
        return RdpCurve._of(np.maximum(self._values, other._values))

    def epsilon(self, delta: float) -> float:
        """The (epsilon, delta)-DP epsilon this curve implies at `delta`."""
        if not 0 < delta < 1:
            raise ValidationError(f"epsilon expects 0 < delta < 1. Received: delta={delta}")
        if self.is_zero:
            return 0.0
        eps, _ = compute_epsilon(_ORDERS, self._values, delta)
        return float(eps)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RdpCurve):
            return NotImplemented
        return bool(np.array_equal(self._values, other._values))

    def __hash__(self) -> int:
        return hash(self._values.tobytes())

    def __repr__(self) -> str:
        if self.is_zero:
            return "RdpCurve.zero()"
        shown = np.array2string(self._values, threshold=6, edgeitems=3, precision=4)
        return f"RdpCurve({shown})"
