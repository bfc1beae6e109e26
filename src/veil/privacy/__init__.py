"""Privacy accounting: RDP curves, mechanism costs, the per-model cart, calibration.

Also the maths of a release: bounding private per-row values (`bounding`) and the
secure noise every mechanism draws (`noise`). Imports neither torch nor the web stack,
so the node's ledger and the DS's laptop can both use it.
"""

from veil.privacy.bounding import (
    Bound,
    EachRow,
    MeanOf,
    MeanOfRows,
    Released,
    bound_from_dict,
    release_value,
)
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
from veil.privacy.noise import SecureNoise, snap

__all__ = [
    "ORDERS",
    "SIGMA_MAX",
    "SIGMA_MIN",
    "Bound",
    "Cart",
    "CartState",
    "EachRow",
    "MeanOf",
    "MeanOfRows",
    "Quote",
    "RdpCurve",
    "Released",
    "SecureNoise",
    "SourceArrays",
    "SourceState",
    "bound_from_dict",
    "calibrate_fit",
    "calibrate_sigma",
    "dominated_gaussian_sigma",
    "gaussian",
    "gaussian_rho",
    "pld_epsilon",
    "poisson_gaussian",
    "quote_fit",
    "release_value",
    "snap",
]
