"""Privacy accounting: RDP curves, mechanism costs, the per-model cart, calibration.

Imports neither torch nor the web stack, so the node's ledger and the DS's laptop can
both use it.
"""

from veil.privacy.calibration import (
    SIGMA_MAX,
    SIGMA_MIN,
    Quote,
    calibrate_fit,
    calibrate_sigma,
    dominated_gaussian_sigma,
    quote_fit,
)
from veil.privacy.cart import Cart, CartState, SourceArrays, SourceState
from veil.privacy.curve import ORDERS, RdpCurve
from veil.privacy.mechanisms import gaussian, gaussian_rho, pld_epsilon, poisson_gaussian

__all__ = [
    "ORDERS",
    "SIGMA_MAX",
    "SIGMA_MIN",
    "Cart",
    "CartState",
    "Quote",
    "RdpCurve",
    "SourceArrays",
    "SourceState",
    "calibrate_fit",
    "calibrate_sigma",
    "dominated_gaussian_sigma",
    "gaussian",
    "gaussian_rho",
    "pld_epsilon",
    "poisson_gaussian",
    "quote_fit",
]
