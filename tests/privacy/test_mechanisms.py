import numpy as np
import pytest
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from veil import ValidationError
from veil.privacy import ORDERS, RdpCurve, gaussian, gaussian_rho, pld_epsilon, poisson_gaussian

DELTA = 1e-5
# A few values keep the property tests fast: each new (q, sigma) costs a dp-accounting call.
QS = st.sampled_from([0.001, 0.01, 0.05, 0.2, 0.5])
SIGMAS = st.sampled_from([0.5, 0.8, 1.0, 2.0, 4.0, 10.0])
STEPS = st.integers(1, 50_000)


def test_pinned_rdp_epsilon() -> None:
    # dp-accounting on its default orders gives 1.0354900660362436 for this fit.
    eps = poisson_gaussian(0.01, 4.0, 10_000).epsilon(DELTA)
    assert round(eps, 3) == 1.035


def test_pinned_pld_epsilon() -> None:
    assert round(pld_epsilon(0.01, 4.0, 10_000, delta=DELTA), 3) == 0.947


def test_curve_matches_the_accountant_with_the_same_orders() -> None:
    accountant = RdpAccountant(orders=ORDERS)
    accountant.compose(PoissonSampledDpEvent(0.02, GaussianDpEvent(1.5)), 300)
    np.testing.assert_array_equal(poisson_gaussian(0.02, 1.5, 300).values, accountant.rdp)


def test_curve_is_finite_where_dp_accounting_gives_up() -> None:
    curve = poisson_gaussian(0.5, 0.3)
    assert np.all(np.isfinite(curve.values))
    assert np.all(curve.values <= gaussian(0.3).values)


def test_gaussian_is_alpha_times_rho() -> None:
    for sigma in (0.5, 1.0, 3.7):
        expected = np.array(ORDERS) * gaussian_rho(sigma)
        np.testing.assert_allclose(gaussian(sigma).values, expected, rtol=1e-15)
    np.testing.assert_allclose(gaussian(2.0, count=3).values, (gaussian(2.0) * 3).values)
    assert gaussian_rho(2.0) == 0.125


def test_full_sampling_is_the_gaussian_and_no_sampling_is_free() -> None:
    np.testing.assert_allclose(poisson_gaussian(1.0, 2.0, 7).values, gaussian(2.0, 7).values)
    assert poisson_gaussian(0.0, 2.0, 7) == RdpCurve.zero()
    assert poisson_gaussian(0.3, 2.0, 0) == RdpCurve.zero()
    assert pld_epsilon(0.0, 2.0, 7, delta=DELTA) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"q": 1.5, "sigma": 1.0}, "q=1.5"),
        ({"q": -0.1, "sigma": 1.0}, "q=-0.1"),
        ({"q": 0.1, "sigma": 0.0}, "sigma=0.0"),
        ({"q": 0.1, "sigma": float("inf")}, "sigma=inf"),
        ({"q": 0.1, "sigma": 1.0, "steps": -1}, "steps=-1"),
        ({"q": 0.1, "sigma": 1.0, "steps": 2.5}, "steps=2.5"),
    ],
)
def test_arguments_are_validated(kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        poisson_gaussian(**kwargs)  # type: ignore[arg-type]


def test_pld_delta_is_validated() -> None:
    with pytest.raises(ValidationError, match="delta=1.0"):
        pld_epsilon(0.01, 1.0, 10, delta=1.0)


@given(q=QS, sigma=SIGMAS, steps=STEPS, more=st.integers(1, 10_000))
@settings(max_examples=25, deadline=None)
def test_epsilon_grows_with_steps(q: float, sigma: float, steps: int, more: int) -> None:
    assert poisson_gaussian(q, sigma, steps + more).epsilon(DELTA) >= poisson_gaussian(
        q, sigma, steps
    ).epsilon(DELTA)


@given(q=QS, other=QS, sigma=SIGMAS, steps=STEPS)
@settings(max_examples=25, deadline=None)
def test_epsilon_grows_with_q(q: float, other: float, sigma: float, steps: int) -> None:
    low, high = sorted((q, other))
    assert np.all(
        poisson_gaussian(low, sigma, steps).values <= poisson_gaussian(high, sigma, steps).values
    )
    assert poisson_gaussian(low, sigma, steps).epsilon(DELTA) <= poisson_gaussian(
        high, sigma, steps
    ).epsilon(DELTA)


@given(q=QS, sigma=SIGMAS, other=SIGMAS, steps=STEPS)
@settings(max_examples=25, deadline=None)
def test_epsilon_shrinks_with_sigma(q: float, sigma: float, other: float, steps: int) -> None:
    low, high = sorted((sigma, other))
    assert poisson_gaussian(q, high, steps).epsilon(DELTA) <= poisson_gaussian(
        q, low, steps
    ).epsilon(DELTA)


@given(q=QS, sigma=SIGMAS, a=STEPS, b=STEPS)
@settings(max_examples=25, deadline=None)
def test_fits_compose_by_adding_curves(q: float, sigma: float, a: int, b: int) -> None:
    np.testing.assert_allclose(
        (poisson_gaussian(q, sigma, a) + poisson_gaussian(q, sigma, b)).values,
        poisson_gaussian(q, sigma, a + b).values,
        rtol=1e-12,
    )
