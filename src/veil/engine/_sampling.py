"""The sampling rate and step count of `fit`, as the privacy accounting must use them.

Each of `steps_per_epoch(n, b) = ceil(n / b)` steps per epoch includes every training
row independently with probability `q = sampling_rate(n, b) = min(1, b / n)`. The
accountant composes exactly `epochs * steps_per_epoch(n, b)` Poisson-subsampled
Gaussian mechanisms at that `q`; use these two functions, not a re-derivation.
"""

from __future__ import annotations

import math

import numpy as np

from veil._exceptions import ValidationError

__all__ = ["sampling_rate", "steps_per_epoch"]


def _check(n_train: int, batch_size: int) -> None:
    for name, value in (("number of training rows", n_train), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValidationError(f"Expected {name} of a positive int. Received: {value!r}")


def sampling_rate(n_train: int, batch_size: int) -> float:
    """q = batch_size / n_train, at most 1."""
    _check(n_train, batch_size)
    return min(1.0, batch_size / n_train)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """ceil(n_train / batch_size): the steps in one epoch of `fit`."""
    _check(n_train, batch_size)
    return math.ceil(n_train / batch_size)
