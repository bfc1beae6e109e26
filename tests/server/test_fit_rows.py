"""`fits._distinct`: a fit's pool may not repeat a row; the check is quick on slices."""

import numpy as np
import pytest

from veil.server.services.fits import _distinct


@pytest.mark.parametrize(
    ("rows", "distinct"),
    [
        (np.arange(0), True),
        (np.arange(1), True),
        (np.arange(10, 1000, 3), True),  # a slice with a positive step
        (np.arange(999, -1, -2), True),  # a negative step: checked by sorting
        (np.array([4, 1, 7, 2]), True),
        (np.array([1, 2, 2, 3]), False),
        (np.array([5, 1, 5]), False),
    ],
)
def test_distinct(rows: np.ndarray, distinct: bool) -> None:
    assert _distinct(rows) is distinct
