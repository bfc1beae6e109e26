import json
import math

import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from veil import ValidationError
from veil.privacy import ORDERS, RdpCurve

curve_values = arrays(
    np.float64,
    len(ORDERS),
    elements=st.floats(0, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False),
)


def test_orders_grid() -> None:
    assert isinstance(ORDERS, tuple)
    assert 60 <= len(ORDERS) <= 160
    assert list(ORDERS) == sorted(ORDERS) and ORDERS[0] > 1


def test_curve_is_immutable() -> None:
    source = np.ones(len(ORDERS))
    curve = RdpCurve(source)
    source[0] = 5.0
    assert curve.values[0] == 1.0
    with pytest.raises(ValueError):
        curve.values[0] = 2.0


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ([0.0] * 3, f"expects {len(ORDERS)} values"),
        ([0.0] * (len(ORDERS) - 1) + [math.nan], "finite"),
        ([0.0] * (len(ORDERS) - 1) + [math.inf], "finite"),
        ([0.0] * (len(ORDERS) - 1) + [-1.0], "non-negative"),
        ("abc", "list"),
    ],
)
def test_from_list_refuses_bad_values(values: list[float], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        RdpCurve.from_list(values)


def test_from_list_error_names_expected_and_received() -> None:
    with pytest.raises(ValidationError) as info:
        RdpCurve.from_list([1.0, 2.0])
    assert info.value.detail == {"expected": len(ORDERS), "received": 2}
    assert "Received: 2" in str(info.value)


@given(curve_values)
def test_list_round_trip_through_json_is_exact(values: np.ndarray) -> None:
    curve = RdpCurve(values)
    assert RdpCurve.from_list(json.loads(json.dumps(curve.to_list()))) == curve


@given(curve_values, curve_values)
def test_subtraction_undoes_addition(c: np.ndarray, d: np.ndarray) -> None:
    c, d = RdpCurve(c), RdpCurve(d)
    assert (c - c).is_zero
    total = c + d
    # Exact up to the rounding of c + d itself.
    assert np.all(np.abs((total - c).values - d.values) <= 1e-15 * total.values)
    # Never rounds down: what was charged plus the increment covers the total.
    assert np.all(c.values + ((c + d) - c).values >= (c + d).values)


@given(st.lists(curve_values, min_size=1, max_size=6))
def test_publishing_twice_charges_once(growth: list[np.ndarray]) -> None:
    cart, charged = RdpCurve.zero(), RdpCurve.zero()
    for step in growth:
        cart = cart + RdpCurve(step)
        increment = cart - charged
        charged = charged + increment
        assert np.all(charged.values >= cart.values)
        assert (cart - charged).is_zero


def test_subtracting_a_larger_curve_is_refused() -> None:
    small, large = RdpCurve.zero(), RdpCurve(np.ones(len(ORDERS)))
    with pytest.raises(ValidationError, match="larger RDP curve"):
        small - large


def test_float_noise_below_zero_is_clipped() -> None:
    a = RdpCurve(np.full(len(ORDERS), 1.0))
    b = RdpCurve(np.full(len(ORDERS), 1.0 + 1e-15))
    assert (a - b).is_zero
    with pytest.raises(ValidationError):
        a - RdpCurve(np.full(len(ORDERS), 1.0 + 1e-9))


def test_composition_and_scaling() -> None:
    c = RdpCurve(np.linspace(0.1, 3.0, len(ORDERS)))
    assert c * 3 == c + c + c == 3 * c
    assert c * 0 == RdpCurve.zero()
    np.testing.assert_allclose(c.scale(2.5).values, c.values * 2.5)
    with pytest.raises(ValidationError):
        c * -1
    with pytest.raises(ValidationError):
        c.scale(math.nan)
    with pytest.raises(TypeError):
        c * 1.5  # type: ignore[operator]


def test_maximum_is_pointwise() -> None:
    a = RdpCurve(np.linspace(0, 1, len(ORDERS)))
    b = RdpCurve(np.linspace(1, 0, len(ORDERS)))
    np.testing.assert_array_equal(a.maximum(b).values, np.maximum(a.values, b.values))


def test_epsilon_matches_dp_accounting() -> None:
    c = RdpCurve(np.array(ORDERS) * 0.01)
    assert c.epsilon(1e-5) == compute_epsilon(ORDERS, c.values, 1e-5)[0]
    assert RdpCurve.zero().epsilon(1e-5) == 0.0
    with pytest.raises(ValidationError):
        c.epsilon(0.0)


def test_equal_curves_hash_alike() -> None:
    zero = RdpCurve(np.full(len(ORDERS), -0.0))
    assert zero == RdpCurve.zero()
    assert hash(zero) == hash(RdpCurve.zero())
    assert zero.to_list() == [0.0] * len(ORDERS)
