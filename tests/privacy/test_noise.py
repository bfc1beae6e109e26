"""The secure noise source: its distributions, its independence, and snapping."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from veil import ValidationError
from veil.privacy import SecureNoise, snap
from veil.privacy.noise import SNAP_BITS


def test_uniforms_lie_in_the_half_open_unit_interval_on_a_53_bit_grid() -> None:
    u = SecureNoise().uniform(200_000)
    assert u.dtype == np.float64 and (u > 0).all() and (u <= 1).all()
    assert np.all(u * 2.0**53 == np.round(u * 2.0**53))
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)


def test_standard_normals_are_standard_normal() -> None:
    z = SecureNoise().standard_normal(200_000)
    assert z.shape == (200_000,) and np.isfinite(z).all()
    assert stats.kstest(z, "norm").pvalue > 1e-4
    assert SecureNoise().standard_normal((3, 4)).shape == (3, 4)
    assert SecureNoise().gaussian((), 2.0).shape == ()


def test_gaussian_scales_by_std_and_refuses_bad_ones() -> None:
    sample = SecureNoise().gaussian(100_000, 3.0)
    assert abs(sample.std() / 3.0 - 1) < 0.02
    for std in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="finite noise std"):
            SecureNoise().gaussian(3, std)


def test_every_source_is_keyed_afresh_and_cannot_be_seeded() -> None:
    a, b = SecureNoise().standard_normal(10_000), SecureNoise().standard_normal(10_000)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(10_000)
    with pytest.raises(TypeError):
        SecureNoise(0)  # type: ignore[call-arg]
    source = SecureNoise()
    assert not np.array_equal(source.uniform(8), source.uniform(8))  # a stream, not a replay


@pytest.mark.parametrize("p", [0.0, 0.01, 0.5, 1.0])
def test_coins_come_up_with_probability_p(p: float) -> None:
    coins = SecureNoise().bernoulli(100_000, p)
    assert coins.dtype == bool and coins.shape == (100_000,)
    assert abs(coins.mean() - p) <= 5 * math.sqrt(p * (1 - p) / coins.size)
    with pytest.raises(ValidationError, match="probability"):
        SecureNoise().bernoulli(3, 1.5)


@given(
    st.floats(-1e12, 1e12, allow_nan=False),
    st.floats(1e-30, 1e30, allow_nan=False, allow_infinity=False),
)
def test_snapping_rounds_to_a_power_of_two_grid_far_below_the_noise(x: float, std: float) -> None:
    grid = 2.0 ** (math.floor(math.log2(std)) - SNAP_BITS)
    out = float(snap(np.array(x), std))
    assert abs(out - x) <= grid / 2 * (1 + 1e-12) + abs(x) * 2**-52
    assert grid <= std * 2.0**-SNAP_BITS
    assert out / grid == round(out / grid) or abs(x) > grid * 2**52


def test_snapping_leaves_values_alone_without_a_usable_grid() -> None:
    values = np.array([1.0, 2.5])
    np.testing.assert_array_equal(snap(values, 0.0), values)
    np.testing.assert_array_equal(snap(values, 1e-320), values)  # grid would underflow
