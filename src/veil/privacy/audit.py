"""Empirical privacy auditing: turn an attack's success into a lower bound on epsilon.

The one-run audit of Steinke, Nasr and Jagielski (2023, "Privacy Auditing with One (1)
Training Run"): m canaries are each included in the training data with probability
1/2, independently; after training, an attacker guesses for some of them whether they
were included (abstaining on the rest). If training is (epsilon, delta)-DP, the number
of correct guesses v among r is at most as likely as under r coin flips that are right
with probability e^eps / (1 + e^eps), up to a delta term:

    P[V >= v] <= P[Binom(r, p_eps) >= v] + 2 m delta max_i P[v - i <= Binom < v] / i

(their Theorem 3.1). An epsilon whose p-value is below 1 - confidence is refuted, so
the largest such epsilon is a lower bound that holds with that confidence. A sound
mechanism's bound stays below the epsilon it was charged; a broken one exceeds it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from veil._exceptions import ValidationError

__all__ = ["AuditResult", "audit_guesses", "epsilon_lower_bound", "p_value"]

_BISECTIONS = 50


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The probability of at least `v` right guesses out of `r` (of `m` canaries) if the
    mechanism is (epsilon, delta)-DP."""
    if not (0 <= v <= r <= m and epsilon >= 0 and 0 <= delta <= 1):
        raise ValidationError(
            "p_value expects 0 <= v <= r <= m, epsilon >= 0 and 0 <= delta <= 1. "
            f"Received: m={m}, r={r}, v={v}, epsilon={epsilon}, delta={delta}"
        )
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(1.0, tail)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[Binom = v - i], i = 1..v
    worst = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * worst)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon that `v` right guesses of `r` refute at `confidence` (0 if none)."""
    if not 0 < confidence < 1:
        raise ValidationError(f"Expected 0 < confidence < 1. Received: confidence={confidence}")
    alpha = 1.0 - confidence

    def refuted(epsilon: float) -> bool:
        return p_value(m=m, r=r, v=v, epsilon=epsilon, delta=delta) < alpha

    if not refuted(0.0):
        return 0.0
    high = 1.0
    while refuted(high):
        high *= 2
    low = 0.0
    for _ in range(_BISECTIONS):
        mid = (low + high) / 2
        low, high = (mid, high) if refuted(mid) else (low, mid)
    return low


@dataclass(frozen=True)
class AuditResult:
    """The best bound over the guess sizes tried, with its guesses."""

    epsilon: float
    confidence: float
    canaries: int
    guesses: int
    correct: int


def audit_guesses(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    fractions: Sequence[float] = (0.02, 0.05, 0.1, 0.2),
) -> AuditResult:
    """Guess "included" for the highest scores and "excluded" for the lowest, k of each
    for k = fraction x m, and keep the largest bound.

    Trying several k is several tests, so each is run at a Bonferroni-corrected level:
    the reported bound holds at `confidence` overall.
    """
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = int(scores.shape[0])
    if included.shape != scores.shape or m == 0:
        raise ValidationError(
            "Expected one score and one inclusion flag per canary. Received: "
            f"scores {scores.shape}, included {included.shape}"
        )
    order = np.argsort(scores, kind="stable")
    level = 1.0 - (1.0 - confidence) / len(fractions)
    best = AuditResult(0.0, confidence, m, 0, 0)
    for fraction in fractions:
        k = max(1, int(fraction * m))
        if 2 * k > m:
            continue
        correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
        bound = epsilon_lower_bound(m=m, r=2 * k, v=correct, delta=delta, confidence=level)
        if bound > best.epsilon:
            best = AuditResult(bound, confidence, m, 2 * k, correct)
    return best
