"""Subject-level batches: rows grouped by the data subject (a person) they belong to.

Where one person owns several rows, subject-level DP-SGD samples people, not rows:
each step draws every subject of the pool with probability q, takes that subject's
rows (all of them, or `rows_per_subject` of them chosen at random), and the trainer
clips each subject's summed gradient. `SubjectIndex` holds the rows sorted by subject
so that a batch is gathered with array operations only, however many subjects it holds.

With `rows_per_subject = k`, every sampled subject takes exactly k slots: a subject
with fewer rows is padded with slots marked not real (they contribute nothing), so a
step's work depends on the number of subjects drawn only, never on how many rows each
subject has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from veil._exceptions import ValidationError
from veil.privacy.grouping import SubjectOrder

__all__ = ["SubjectBatch", "SubjectIndex", "check_rows_per_subject", "check_subjects"]


@dataclass(frozen=True)
class SubjectBatch:
    """The rows of some sampled subjects: `groups[i]` is row i's subject (0, 1, ...
    in sampling order, so sorted) and `real[i]` False marks a padding slot."""

    rows: np.ndarray
    groups: np.ndarray
    real: np.ndarray


def check_subjects(subjects: object, n: int) -> np.ndarray:
    """One integer subject per row of x (shape and dtype only: the values are private)."""
    if (
        not isinstance(subjects, np.ndarray)
        or subjects.shape != (n,)
        or (subjects.dtype.kind not in "iu")
    ):
        what = (
            f"{subjects.dtype} of shape {subjects.shape}"
            if isinstance(subjects, np.ndarray)
            else type(subjects).__name__
        )
        raise ValidationError(
            f"Expected subjects as an integer numpy array with one entry per row, shape "
            f"({n},). Received: {what}"
        )
    return subjects


def check_rows_per_subject(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValidationError(
            f"Expected rows_per_subject of a positive int or None (all of a subject's rows). "
            f"Received: rows_per_subject={value!r}"
        )
    return int(value)


class SubjectIndex:
    """`rows` (row indices) of the subjects `subjects` (one per row), sampled over the
    subjects `pool`: the public list of subjects a fit samples from. A pool subject that
    owns none of `rows` is still sampled as often as any other, and contributes nothing."""

    def __init__(
        self,
        rows: np.ndarray,
        subjects: np.ndarray,
        pool: np.ndarray,
        *,
        shuffled: np.ndarray | None = None,
    ) -> None:
        """`shuffled`: a uniformly random permutation of the rows, from the caller's
        secure randomness (by default numpy's, from the OS), that the sort goes through
        (`veil.privacy.grouping`)."""
        rows, subjects = np.asarray(rows, np.int64), np.asarray(subjects)
        if subjects.shape != rows.shape or (subjects.size and subjects.dtype.kind not in "iu"):
            raise ValidationError(
                f"Expected one integer subject per row, shape {rows.shape}. "
                f"Received: {subjects.dtype} of shape {subjects.shape}"
            )
        if shuffled is None:
            shuffled = np.random.default_rng().permutation(rows.size)
        order = SubjectOrder.of(subjects, shuffled)
        self._ordered = order.gather(subjects).astype(np.int64)
        self._rows = order.gather(rows)
        self._sample(pool)

    def _sample(self, pool: np.ndarray) -> None:
        self.pool = np.asarray(pool, np.int64)
        if self.pool.ndim != 1 or np.unique(self.pool).size != self.pool.size:
            raise ValidationError("Expected a pool of distinct subjects, one axis.")
        self._start = np.searchsorted(self._ordered, self.pool, side="left")
        self._stop = np.searchsorted(self._ordered, self.pool, side="right")

    def over(self, pool: np.ndarray) -> SubjectIndex:
        """The same rows, sampled over the subjects `pool` instead (no new sort)."""
        other = object.__new__(SubjectIndex)
        other._ordered, other._rows = self._ordered, self._rows
        other._sample(pool)
        return other

    def __len__(self) -> int:
        return int(self.pool.size)

    def gather(
        self,
        chosen: np.ndarray,
        *,
        rows_per_subject: int | None,
        uniform: Callable[[int], np.ndarray],
    ) -> SubjectBatch:
        """The rows of the pool subjects at positions `chosen`; with `rows_per_subject`
        k, k random rows of each (all of a subject's rows when it has k or fewer),
        padded to exactly k slots per subject. With k, the work is the same whatever
        the subjects own: k uniforms and k slots per subject, and no subject's other
        rows are read."""
        chosen = np.asarray(chosen, np.int64)
        start, counts = self._start[chosen], self._stop[chosen] - self._start[chosen]
        if rows_per_subject is None:
            groups = np.repeat(np.arange(chosen.size), counts)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            positions = np.repeat(start, counts) + np.arange(groups.size) - first
            return SubjectBatch(self._rows[positions], groups, np.ones(groups.size, bool))
        k = rows_per_subject
        offsets = _distinct_offsets(counts, k, uniform)
        real = offsets >= 0
        source = self._rows if self._rows.size else np.zeros(1, np.int64)
        # A padding slot holds some row (the first), evaluated and then masked out.
        rows = source[np.where(real, start[:, None] + offsets, 0)]
        groups = np.repeat(np.arange(chosen.size), k)
        return SubjectBatch(rows.ravel(), groups, real.ravel())


def _distinct_offsets(
    counts: np.ndarray, k: int, uniform: Callable[[int], np.ndarray]
) -> np.ndarray:
    """Per subject, min(count, k) distinct offsets in [0, count), then -1s: (subjects, k).

    A subject of k rows or fewer gives all of them; a larger one a uniformly random k of
    them, by Floyd's algorithm (for j = c-k .. c-1: draw t in [0, j], keep it unless
    already kept, else keep j), run on every subject at once: exactly k uniforms per
    subject, k^2 comparisons, whatever the counts."""
    drawn = counts.size
    u = uniform(drawn * k).reshape(drawn, k)
    slot = np.arange(k)
    small = counts <= k
    out = np.where(small[:, None] & (slot < counts[:, None]), slot, -1)
    for step in range(k):
        j = counts - k + step  # >= 0 for the subjects Floyd's algorithm samples
        t = np.minimum((u[:, step] * (j + 1)).astype(np.int64), j)  # u is in (0, 1]
        kept = (out[:, :step] == t[:, None]).any(axis=1)
        out[:, step] = np.where(small, out[:, step], np.where(kept, j, t))
    return out
