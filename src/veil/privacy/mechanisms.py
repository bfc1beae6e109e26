"""RDP curves of the mechanisms Veil runs, all taken from Google's dp-accounting.

Adjacency is add/remove one row. Noise is given as a multiplier `sigma`: the noise
standard deviation divided by the L2 sensitivity (`max_grad_norm` for DP-SGD).
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
from dp_accounting.dp_event import DpEvent
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from veil._exceptions import ValidationError
from veil.privacy.curve import ORDERS, RdpCurve

__all__ = ["gaussian", "gaussian_rho", "pld_epsilon", "poisson_gaussian"]


def _check_q(q: float) -> float:
    if not isinstance(q, numbers.Real) or not 0 <= q <= 1:
        raise ValidationError(f"Expected a sampling rate 0 <= q <= 1. Received: q={q!r}")
    return float(q)


def _check_sigma(sigma: float) -> float:
    if not isinstance(sigma, numbers.Real) or not (0 < sigma < math.inf):
        raise ValidationError(
            f"Expected a finite noise multiplier sigma > 0. Received: sigma={sigma!r}"
        )
    return float(sigma)


def _check_steps(steps: int) -> int:
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 0:
        raise ValidationError(f"Expected an integer steps >= 0. Received: steps={steps!r}")
    return int(steps)


def _check_delta(delta: float) -> float:
    if not isinstance(delta, numbers.Real) or not 0 < delta < 1:
        raise ValidationError(f"Expected 0 < delta < 1. Received: delta={delta!r}")
    return float(delta)


def _rdp_of(event: DpEvent) -> np.ndarray:
    return RdpAccountant(orders=ORDERS).compose(event).rdp


# Curves are small and immutable; caching them makes calibration and repeated fits cheap.
@functools.lru_cache(maxsize=1024)
def _gaussian_step(sigma: float) -> RdpCurve:
    return RdpCurve._of(_rdp_of(GaussianDpEvent(sigma)))


@functools.lru_cache(maxsize=1024)
def _poisson_step(q: float, sigma: float) -> RdpCurve:
    sampled = _rdp_of(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)))
    # dp-accounting answers inf (or gives up) at orders where its series does not
    # converge. Subsampling never costs more than the full Gaussian (Rényi divergence
    # is quasi-convex and the sampled output is a mixture), so that bound keeps every
    # order finite without weakening the curve anywhere it converged.
    return RdpCurve._of(np.fmin(sampled, _gaussian_step(sigma).values))


def poisson_gaussian(q: float, sigma: float, steps: int = 1) -> RdpCurve:
    """`steps` Poisson-subsampled Gaussian releases at rate `q`: one DP-SGD `fit`."""
    q, sigma, steps = _check_q(q), _check_sigma(sigma), _check_steps(steps)
    if q == 0 or steps == 0:
        return RdpCurve.zero()
    return _poisson_step(q, sigma) * steps


def gaussian(sigma: float, count: float = 1) -> RdpCurve:
    """`count` Gaussian releases of a sensitivity-1 sum with noise std `sigma`."""
    sigma = _check_sigma(sigma)
    if not isinstance(count, numbers.Real) or not (0 <= count < math.inf):
        raise ValidationError(f"Expected a finite count >= 0. Received: count={count!r}")
    return _gaussian_step(sigma).scale(float(count))


def gaussian_rho(sigma: float) -> float:
    """The zCDP rho of one Gaussian release: 1 / (2 sigma^2).

    The Gaussian's RDP curve is exactly alpha * rho at every order alpha, so the
    Gaussian costs of a row compose by adding rhos: a cart keeps one float per row
    instead of one curve per row.
    """
    sigma = _check_sigma(sigma)
    return 1.0 / (2.0 * sigma * sigma)


def pld_epsilon(q: float, sigma: float, steps: int, *, delta: float) -> float:
    """The tighter privacy-loss-distribution epsilon of `poisson_gaussian(q, sigma, steps)`.

    Shown beside the ledger's RDP figure; the ledger itself stays in RDP.
    """
    q, sigma, steps = _check_q(q), _check_sigma(sigma), _check_steps(steps)
    delta = _check_delta(delta)
    if q == 0 or steps == 0:
        return 0.0
    accountant = PLDAccountant()
    accountant.compose(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)
    return float(accountant.get_epsilon(delta))
