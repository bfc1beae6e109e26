"""Rows grouped by subject (`privacy.grouping`): the same groups as numpy's `unique`,
from a sort of distinct keys whatever the subjects (the timing side is in
tests/attacks/test_redteam_timing.py)."""

from __future__ import annotations

import numpy as np
import pytest

from veil.privacy import grouping
from veil.privacy.grouping import SubjectOrder, sort_by_subject


def _subjects(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    if kind == "few":
        return rng.integers(0, 4, n)
    if kind == "ranks":
        return rng.integers(0, max(n, 1), n)
    if kind == "wide":  # ids, not ranks: beyond what (subject, row) keys hold
        return rng.integers(-(2**62), 2**62, n)
    if kind == "unsigned":
        return rng.integers(0, 2**62, n).astype(np.uint64) * 3
    return rng.integers(-3, 3, n).astype(np.int8)


@pytest.mark.parametrize("kind", ["few", "ranks", "wide", "unsigned", "small"])
def test_rows_are_grouped_and_numbered_as_numpy_would(kind: str) -> None:
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 5, 64, 300):
        subjects = _subjects(rng, kind, n)
        shuffled = rng.permutation(n)
        by_key, numbers = sort_by_subject(subjects, shuffled)
        values, expected = np.unique(subjects, return_inverse=True)
        order = shuffled[by_key]
        np.testing.assert_array_equal(order, np.lexsort((np.arange(n), subjects)))
        np.testing.assert_array_equal(numbers, expected.reshape(-1)[order])
        numbered = SubjectOrder.of(subjects, shuffled)
        np.testing.assert_array_equal(numbered.scatter(numbered.numbers), expected.reshape(-1))
        assert numbers.dtype == np.int64 and (n == 0 or numbers[-1] == values.size - 1)


def test_the_result_does_not_depend_on_the_shuffle() -> None:
    rng = np.random.default_rng(3)
    subjects = rng.integers(0, 9, 200)
    first, second = (SubjectOrder.of(subjects, rng.permutation(200)) for _ in range(2))
    np.testing.assert_array_equal(first.scatter(first.numbers), second.scatter(second.numbers))


def test_the_sort_is_given_distinct_keys_for_any_ranks(monkeypatch) -> None:
    """The node's subjects are ranks below the dataset's size: their keys fit, so they
    are never numbered by `np.unique` (whose work follows the subjects) first."""

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("ranks went through np.unique")

    monkeypatch.setattr(grouping.np, "unique", refuse)
    rng = np.random.default_rng(5)
    for n, top in ((1, 2**40), (1000, 2**40), (50_000, 2**31)):
        subjects = rng.integers(0, top, n)
        shuffled = rng.permutation(n)
        keys = grouping._keys(subjects, shuffled)
        assert len(set(keys.tolist())) == n  # distinct: no repeats to sort faster
        by_key, _ = sort_by_subject(subjects, shuffled)
        assert np.all(np.diff(subjects[shuffled][by_key]) >= 0)


def test_an_order_gathers_rows_by_subject_and_scatters_them_back() -> None:
    rng = np.random.default_rng(11)
    subjects = rng.integers(0, 7, 120)
    values = rng.normal(size=(120, 3))
    order = SubjectOrder.of(subjects, rng.permutation(120))
    gathered = order.gather(values)
    expected = np.lexsort((np.arange(120), subjects))
    np.testing.assert_array_equal(gathered, values[expected])
    assert np.all(np.diff(order.numbers) >= 0) and order.numbers[-1] == 6
    np.testing.assert_array_equal(order.scatter(gathered), values)
