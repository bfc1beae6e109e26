"""The one-run audit's statistics, checked against independent computations."""

import math

import numpy as np
import pytest
from scipy import optimize, stats

from veil import ValidationError
from veil.privacy.audit import audit_guesses, epsilon_lower_bound, p_value


def test_without_delta_the_p_value_is_a_binomial_tail() -> None:
    for eps in (0.0, 0.5, 2.0):
        q = math.exp(eps) / (1 + math.exp(eps))
        assert p_value(m=100, r=40, v=30, epsilon=eps, delta=0) == pytest.approx(
            stats.binom.sf(29, 40, q)
        )


def test_the_p_value_rises_with_epsilon_and_with_delta() -> None:
    """A larger epsilon allows more right guesses, so they are less surprising."""
    values = [p_value(m=1000, r=200, v=150, epsilon=e, delta=1e-5) for e in (0.1, 0.5, 1, 2)]
    assert values == sorted(values)
    assert p_value(m=1000, r=200, v=150, epsilon=1, delta=1e-3) > values[2]


def test_the_bound_solves_the_tail_equation() -> None:
    r, v, alpha = 200, 170, 0.05
    expected = optimize.brentq(
        lambda e: stats.binom.sf(v - 1, r, 1 / (1 + math.exp(-e))) - alpha, 0, 20
    )
    assert epsilon_lower_bound(m=500, r=r, v=v, delta=0, confidence=0.95) == pytest.approx(
        expected, abs=1e-9
    )
    # All of r guesses right: p_eps^r = alpha.
    q = alpha ** (1 / r)
    assert epsilon_lower_bound(m=500, r=r, v=r, delta=0) == pytest.approx(math.log(q / (1 - q)))


def test_guessing_no_better_than_chance_refutes_nothing() -> None:
    assert epsilon_lower_bound(m=1000, r=200, v=100, delta=1e-5) == 0.0


def test_audit_guesses_takes_the_extremes_and_corrects_for_several_guess_sizes() -> None:
    included = np.arange(1000) % 2 == 0
    perfect = audit_guesses(included.astype(float), included, delta=0.0)
    assert perfect.guesses == 400 and perfect.correct == 400 and perfect.canaries == 1000
    alone = epsilon_lower_bound(m=1000, r=400, v=400, delta=0.0, confidence=0.95)
    assert 0 < perfect.epsilon < alone  # four guess sizes tried: a stricter level each
    noise = np.random.default_rng(0).normal(size=1000)
    assert audit_guesses(noise, included, delta=1e-5).epsilon < 0.5
    with pytest.raises(ValidationError, match="one score and one inclusion flag"):
        audit_guesses(noise, included[:10], delta=0.0)
    with pytest.raises(ValidationError):
        p_value(m=10, r=20, v=5, epsilon=1.0, delta=0.0)
