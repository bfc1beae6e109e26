"""Quotes for a planned `fit`, and the noise level that meets a target epsilon.

One epoch is `n_train / batch_size` expected Poisson steps, rounded up, so a fit of
`epochs` epochs runs `steps = epochs * ceil(n_train / batch_size)` steps at sampling
rate `q = batch_size / n_train`. Validation rows are released `val_releases_per_epoch`
times per epoch as plain Gaussian sums (no sampling) at `val_sigma`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from veil._exceptions import ValidationError
from veil.privacy.cart import Cart, _as_rows, _check_distinct, _check_key, _FitPreview
from veil.privacy.curve import ORDERS, RdpCurve
from veil.privacy.mechanisms import gaussian_rho, poisson_gaussian

__all__ = [
    "dominated_gaussian_sigma",
    "SIGMA_MAX",
    "SIGMA_MIN",
    "Quote",
    "calibrate_fit",
    "calibrate_sigma",
    "quote_fit",
]

SIGMA_MIN = 0.3
SIGMA_MAX = 1e3
_SIGMA_RTOL = 1e-3


@dataclass(frozen=True)
class Quote:
    """What a planned fit would cost: the epsilon it adds and the epsilon after it, both of
    `base` plus the cart (with no base: of the cart alone), and the cart's curve after it
    (what publishing the model would then charge, before what was paid is subtracted)."""

    epsilon_added: float
    epsilon_after: float
    sigma: float
    steps: int
    q: float
    curve_after: RdpCurve


def _positive_int(value: int, name: str, *, minimum: int = 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValidationError(
            f"Expected {name} as an integer >= {minimum}. Received: {name}={value!r}"
        )
    return int(value)


def _unique_rows(rows: npt.ArrayLike, *, n_rows: int | None, name: str) -> np.ndarray:
    array = _as_rows(rows, n_rows=n_rows, name=name)
    _check_distinct(array, name)
    return array


@dataclass(frozen=True)
class _FitPlan:
    preview: _FitPreview
    base: RdpCurve
    epsilon_now: float
    steps: int
    q: float
    val_releases: int
    delta: float

    def quote(self, sigma: float, val_sigma: float | None = None) -> Quote:
        added = poisson_gaussian(self.q, sigma, self.steps)
        val_rho = self.val_releases * gaussian_rho(sigma if val_sigma is None else val_sigma)
        curve_after = self.preview.curve(added, val_rho)
        epsilon_after = (self.base + curve_after).epsilon(self.delta)
        return Quote(
            epsilon_added=epsilon_after - self.epsilon_now,
            epsilon_after=epsilon_after,
            sigma=float(sigma),
            steps=self.steps,
            q=self.q,
            curve_after=curve_after,
        )


def _plan_fit(
    cart: Cart,
    key: str,
    *,
    n_rows_train: int,
    train_rows: npt.ArrayLike,
    val_rows: npt.ArrayLike | None,
    batch_size: int,
    epochs: int,
    val_releases_per_epoch: int,
    delta: float,
    base: RdpCurve | None,
) -> _FitPlan:
    key = _check_key(key)
    base = RdpCurve.zero() if base is None else base
    n_rows = cart.n_rows(key) if key in cart.sources else None
    n_train = _positive_int(n_rows_train, "n_rows_train")
    train = _unique_rows(train_rows, n_rows=n_rows, name="train_rows")
    if train.size != n_train:
        raise ValidationError(
            f"Expected train_rows to hold n_rows_train={n_train} rows. Received: {train.size}",
            expected=n_train,
            received=int(train.size),
        )
    val = _unique_rows(
        np.empty(0, dtype=np.intp) if val_rows is None else val_rows, n_rows=n_rows, name="val_rows"
    )
    batch_size = _positive_int(batch_size, "batch_size")
    if batch_size > n_train:
        raise ValidationError(
            f"Expected batch_size <= n_rows_train={n_train}. Received: batch_size={batch_size}"
        )
    epochs = _positive_int(epochs, "epochs")
    releases = _positive_int(val_releases_per_epoch, "val_releases_per_epoch", minimum=0)
    if not isinstance(delta, numbers.Real) or not 0 < delta < 1:
        raise ValidationError(f"Expected 0 < delta < 1. Received: delta={delta!r}")
    return _FitPlan(
        preview=cart._preview_fit(key, train_rows=train, val_rows=val),
        base=base,
        epsilon_now=(base + cart.curve()).epsilon(delta),
        steps=epochs * math.ceil(n_train / batch_size),
        q=batch_size / n_train,
        val_releases=releases * epochs if val.size else 0,
        delta=float(delta),
    )


def quote_fit(
    cart: Cart,
    key: str,
    *,
    n_rows_train: int,
    train_rows: npt.ArrayLike,
    val_rows: npt.ArrayLike | None,
    batch_size: int,
    epochs: int,
    sigma: float,
    val_sigma: float | None = None,
    val_releases_per_epoch: int = 2,
    delta: float,
    base: RdpCurve | None = None,
) -> Quote:
    """The epsilon `cart` would gain from a fit on source `key`; the cart is not changed.

    `train_rows` (n_rows_train distinct indices) form the Poisson pool; `val_rows`
    (distinct, may be None) are charged per row at `val_sigma`, default `sigma`. With
    `base` (what else is on the user's ledger), the epsilons are of `base` plus the cart,
    so they say what the fit adds to what is spent.
    """
    plan = _plan_fit(
        cart,
        key,
        n_rows_train=n_rows_train,
        train_rows=train_rows,
        val_rows=val_rows,
        batch_size=batch_size,
        epochs=epochs,
        val_releases_per_epoch=val_releases_per_epoch,
        delta=delta,
        base=base,
    )
    return plan.quote(sigma, val_sigma)


def calibrate_sigma(target_epsilon: float, quote_fn: Callable[[float], float]) -> float:
    """The smallest sigma in [SIGMA_MIN, SIGMA_MAX] with `quote_fn(sigma) <= target_epsilon`.

    `quote_fn` must not increase with sigma (every quote here decreases). Bisection over
    log sigma, to 0.1 % relative; the answer is a sigma that was evaluated and met the
    target, never an interpolation.
    """
    if not isinstance(target_epsilon, numbers.Real) or not 0 < target_epsilon < math.inf:
        raise ValidationError(
            f"Expected a finite target_epsilon > 0. Received: target_epsilon={target_epsilon!r}"
        )
    best = quote_fn(SIGMA_MAX)
    if best > target_epsilon:
        raise ValidationError(
            f"No sigma up to {SIGMA_MAX:g} meets target_epsilon={target_epsilon}: "
            f"the smallest reachable epsilon is {best}",
            target_epsilon=target_epsilon,
            best_epsilon=best,
        )
    if quote_fn(SIGMA_MIN) <= target_epsilon:
        return SIGMA_MIN
    low, high = SIGMA_MIN, SIGMA_MAX  # quote(low) > target >= quote(high)
    while high / low > 1 + _SIGMA_RTOL:
        mid = math.sqrt(low * high)
        if quote_fn(mid) <= target_epsilon:
            high = mid
        else:
            low = mid
    return high


def calibrate_fit(
    cart: Cart,
    key: str,
    *,
    target_epsilon: float,
    n_rows_train: int,
    train_rows: npt.ArrayLike,
    val_rows: npt.ArrayLike | None,
    batch_size: int,
    epochs: int,
    val_releases_per_epoch: int = 2,
    delta: float,
    base: RdpCurve | None = None,
    val_sigma_of: Callable[[float], float] | None = None,
) -> Quote:
    """The quote of the least-noise fit adding at most `target_epsilon` to `cart`.

    Validation releases on `val_rows` use `val_sigma_of(sigma)` (by default the same
    sigma), priced at every trial sigma with what those rows already cost in the cart:
    the fit as it will run. The cart's rows are scanned once, not once per trial sigma.
    """
    plan = _plan_fit(
        cart,
        key,
        n_rows_train=n_rows_train,
        train_rows=train_rows,
        val_rows=val_rows,
        batch_size=batch_size,
        epochs=epochs,
        val_releases_per_epoch=val_releases_per_epoch,
        delta=delta,
        base=base,
    )

    def quote(sigma: float) -> Quote:
        return plan.quote(sigma, None if val_sigma_of is None else val_sigma_of(sigma))

    return quote(calibrate_sigma(target_epsilon, lambda s: quote(s).epsilon_added))


def dominated_gaussian_sigma(curve: RdpCurve, *, count: int) -> float:
    """The smallest sigma whose `count` Gaussian releases cost at most `curve`, order by order.

    A Gaussian release costs alpha * rho, rho = 1 / (2 sigma^2), so `count` of them stay
    under `curve` at every order iff sigma^2 >= max(alpha * count / (2 * curve(alpha))).
    Validation rows priced this way never cost more than the training rows they sit
    beside, so under parallel composition they add nothing to the cart.
    """
    count = _positive_int(count, "count")
    values = curve.values
    if not np.all(values > 0):
        raise ValidationError("Expected a curve > 0 at every order. Received: a curve with zeros")
    orders = np.asarray(ORDERS, dtype=np.float64)
    return float(math.sqrt(np.max(orders * count / (2.0 * values)))) * (1 + 1e-9)
