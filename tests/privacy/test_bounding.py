"""Bounding per-row values: the sensitivity each release charges must hold for any rows."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from veil import ValidationError
from veil.privacy import EachRow, MeanOf, MeanOfRows, SecureNoise, bound_from_dict, release_value

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)


def rows_of(width: int | None = None) -> st.SearchStrategy[np.ndarray]:
    shape = st.integers(1, 12).map(lambda n: (n,) if width is None else (n, width))
    return hnp.arrays(np.float64, shape, elements=ANY_FLOAT)


@given(rows_of(), st.floats(1e-3, 1e3), st.data())
def test_a_mean_moves_by_at_most_its_sensitivity_when_one_row_changes(values, high, data) -> None:
    bound = MeanOf(high=high, fill=data.draw(st.floats(0, high)))
    index = data.draw(st.integers(0, len(values) - 1))
    other = values.copy()
    other[index] = data.draw(ANY_FLOAT)
    zeroed = values.copy()
    zeroed[index] = 0.0  # zero-out adjacency: the null row contributes zero
    n = len(values)
    mean = bound.aggregate(bound.bounded(values), n)
    sensitivity = bound.sensitivity(len(values))
    assert math.isclose(sensitivity, high / len(values))
    assert np.isfinite(mean) and 0 <= mean <= high * (1 + 1e-12)
    assert abs(mean - bound.aggregate(bound.bounded(zeroed), n)) <= sensitivity * (1 + 1e-12)
    assert abs(mean - bound.aggregate(bound.bounded(other), n)) <= sensitivity * (1 + 1e-12)


@given(rows_of(width=3), st.floats(1e-3, 1e3), st.data())
def test_each_row_is_clipped_to_its_norm_and_a_null_row_is_zero(values, norm, data) -> None:
    bound = EachRow(norm)
    out = bound.bounded(values)
    assert np.isfinite(out).all()
    assert (np.linalg.norm(out, axis=1) <= norm * (1 + 1e-9)).all()
    index = data.draw(st.integers(0, len(values) - 1))
    zeroed = values.copy()
    zeroed[index] = 0.0
    diff = np.linalg.norm(out - bound.bounded(zeroed))
    assert diff <= bound.sensitivity(len(values)) * (1 + 1e-9)


def test_rows_keep_their_direction_and_fixed_values_replace_non_finite_ones() -> None:
    values = np.array([[3.0, 4.0], [1e300, 1e300], [np.nan, 1.0], [0.1, 0.0], [-np.inf, 0]])
    out = EachRow(1.0).bounded(values)
    np.testing.assert_allclose(out[0], [0.6, 0.8])
    np.testing.assert_allclose(out[1], [math.sqrt(0.5)] * 2)
    np.testing.assert_array_equal(out[2], [0, 0])
    np.testing.assert_array_equal(out[3], [0.1, 0.0])
    np.testing.assert_array_equal(out[4], [0, 0])
    losses = MeanOf(high=10.0, fill=10.0).bounded(np.array([-1.0, 3.0, 50.0, np.nan, -np.inf]))
    np.testing.assert_array_equal(losses, [0.0, 3.0, 10.0, 10.0, 10.0])


@settings(max_examples=50)
@given(rows_of(width=2), st.floats(0.3, 1e3))
def test_a_released_value_is_always_finite(values, sigma) -> None:
    for bound in (EachRow(1e6), MeanOf(1e6, 1e6)):
        array = values if isinstance(bound, EachRow) else values[:, 0]
        out = release_value(array, bound=bound, sigma=sigma, noise=SecureNoise())
        assert np.isfinite(out.value).all() and np.isfinite(out.std)
        assert out.std == pytest.approx(sigma * bound.sensitivity(len(array)))


def test_release_value_noise_has_the_stated_std() -> None:
    values = np.full((5000, 2), 0.1)
    out = release_value(values, bound=EachRow(0.5), sigma=2.0, noise=SecureNoise())
    assert out.std == 1.0 and abs((out.value - 0.1).std() - 1.0) < 0.03


@pytest.mark.parametrize("high", [7e-308, 1e-200, 1e-101])
def test_a_noise_std_too_small_for_floating_point_is_refused(high: float) -> None:
    """A bound this small would make the std a number that floating point flushes to
    zero (or adds to nothing): a release without noise. Refused, on public numbers."""
    with pytest.raises(ValidationError, match="too small for floating point"):
        release_value(np.zeros(1), bound=MeanOf(high, high), sigma=0.3, noise=SecureNoise())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MeanOf(high=0.0, fill=0.0), "finite high > 0"),
        (lambda: MeanOf(high=1.0, fill=2.0), r"fill in \[0, high=1.0\]"),
        (lambda: EachRow(float("inf")), "finite norm > 0"),
        (lambda: EachRow(True), "norm of a number"),
        (lambda: MeanOf(1.0, 1.0).bounded(np.zeros((2, 2))), r"shape \(n,\)"),
        (lambda: EachRow(1.0).bounded(np.zeros(0)), "at least one row"),
        (lambda: release_value(np.zeros(2), bound=MeanOf(1, 1), sigma=0.0, noise=None), "sigma"),
    ],
)
def test_bad_bounds_are_refused(make, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make()


def test_bounds_round_trip_with_checked_keys() -> None:
    for bound in (MeanOf(2.0, 1.0), EachRow(3.0)):
        assert bound_from_dict(bound.to_dict()) == bound
    for bad in ({"kind": "mean", "high": 1.0}, {"kind": "rows", "norm": 1, "x": 2}, {"kind": "?"}):
        with pytest.raises(ValidationError):
            bound_from_dict(bad)


SUBJECT_BOUNDS = (MeanOf(high=2.0, fill=2.0), EachRow(1.5), MeanOfRows(1.5))


@settings(max_examples=60)
@given(st.integers(2, 12), st.data())
def test_a_subjects_rows_together_move_a_release_by_at_most_its_sensitivity(n, data) -> None:
    """Zero out every row of one subject: the aggregate moves by at most the sensitivity."""
    groups = np.asarray(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    for bound in SUBJECT_BOUNDS:
        shape = (n,) if isinstance(bound, MeanOf) else (n, 2)
        values = data.draw(hnp.arrays(np.float64, shape, elements=ANY_FLOAT))
        subject = data.draw(st.sampled_from(sorted(set(groups.tolist()))))
        without = values.copy()
        without[groups == subject] = 0.0
        out, out_without = (
            bound.aggregate(bound.group(bound.bounded(v), groups), n) for v in (values, without)
        )
        assert np.isfinite(out).all()
        moved = np.linalg.norm(np.asarray(out - out_without).ravel())
        assert moved <= bound.sensitivity(n) * (1 + 1e-9)


def test_without_subjects_grouping_by_row_changes_nothing() -> None:
    values = np.array([[0.3, 0.4], [3.0, 4.0], [0.0, 0.1]])
    each_row = np.arange(3)
    for bound in SUBJECT_BOUNDS:
        rows = values[:, 0] if isinstance(bound, MeanOf) else values
        bounded = bound.bounded(rows)
        np.testing.assert_allclose(
            bound.aggregate(bound.group(bounded, each_row), 3), bound.aggregate(bounded, 3)
        )


def test_a_subject_with_many_rows_is_clipped_as_one() -> None:
    losses = np.full(10, 1.0)
    one_person = np.zeros(10, dtype=np.int64)
    bound = MeanOf(high=2.0, fill=2.0)
    assert bound.aggregate(bound.group(bound.bounded(losses), one_person), 10) == 0.2
    out = release_value(
        np.ones((10, 1)), bound=EachRow(1.0), sigma=1.0, noise=SecureNoise(), groups=one_person
    )
    assert out.std == 1.0  # one subject: sensitivity 1, not sqrt(10)
