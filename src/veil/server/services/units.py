"""The privacy unit of a dataset: each row, or each data subject (a person owning rows).

A dataset uploaded with a subject asset has each row's subject stored as a rank
(0..S-1, `ArrayStore.subjects_path`): private values. Public: that its unit is the
subject, and S. What charges the cart or bounds a release asks `Units`:

- a dataset's positions in the cart are its units: its rows, or its subject ranks;
- rows a data scientist chose belong to subjects that only the node knows, so a charge
  on them is taken by every subject (`Cart.add_gaussian_all`): the cart's price never
  depends on which subjects those rows belong to, and releases on them bound each
  subject's rows together (`release_value(groups=...)`);
- `fit` samples subjects, and holds out the last `validation_split` of the subjects in
  rank order: fixed before any value is read, the same split for any data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from veil._exceptions import NotFound
from veil.engine import RowMetrics
from veil.privacy import Cart, MeanOf
from veil.server.services.datasets import dataset_units_row
from veil.server.storage.arrays import ArrayStore

__all__ = ["Units", "dataset_units", "per_subject"]


@dataclass(frozen=True)
class Units:
    """How the rows of one dataset map to the units its privacy is counted in."""

    n: int  # the dataset's rows, or its subjects: public
    ranks: np.ndarray | None  # each row's subject (memory-mapped, private); None: by row

    @property
    def by_subject(self) -> bool:
        return self.ranks is not None

    @property
    def name(self) -> str:
        return "subject" if self.by_subject else "row"

    def subjects_of(self, rows: np.ndarray) -> np.ndarray | None:
        """The subjects of `rows` (private), or None when each row is its own."""
        return None if self.ranks is None else np.asarray(self.ranks[rows], dtype=np.int64)

    def charge_rows(
        self, cart: Cart, key: str, rows: np.ndarray, *, sigma: float
    ) -> np.ndarray | None:
        """Charge one Gaussian release over the chosen `rows`: to those rows, or, by
        subject, to every subject (which ones hold the rows is private). Returns the
        cart's rows it changed: `rows`, or None for all of them."""
        cart.ensure_source(key, self.n)
        if self.by_subject:
            cart.add_gaussian_all(key, sigma=sigma)
            return None
        cart.add_gaussian_rows(key, rows, sigma=sigma)
        return rows


def dataset_units(session: Session, arrays: ArrayStore, dataset_id: str) -> Units:
    dataset = dataset_units_row(session, dataset_id)
    if dataset is None:
        raise NotFound(f"No dataset {dataset_id!r}.", dataset_id=dataset_id)
    if dataset.subject_asset is None:
        return Units(n=dataset.n_subjects, ranks=None)  # one subject per row
    try:
        ranks = arrays.open(arrays.subjects_path(dataset_id))
    except FileNotFoundError:  # deleted since it was read above: as if it came first
        raise NotFound(f"No dataset {dataset_id!r}.", dataset_id=dataset_id) from None
    return Units(n=dataset.n_subjects, ranks=ranks)


def per_subject(metrics: RowMetrics, ranks: np.ndarray, subjects: np.ndarray) -> RowMetrics:
    """Each of `subjects`' mean of its rows' bounded losses (and accuracy), from per-row
    `metrics` whose rows belong to `ranks`; a subject without rows here gets the fill.

    One value per subject, each within the bound, so a mean over the (public) list of
    subjects has the sensitivity of one row's value: one subject moves one entry.
    """
    position = np.searchsorted(subjects, ranks)
    position = np.where(position < subjects.size, position, 0)
    known = subjects[position] == ranks if subjects.size else np.zeros(ranks.size, bool)
    index = np.where(known, position, subjects.size)  # rows of other subjects: dropped

    def means(values: np.ndarray, bound: MeanOf) -> np.ndarray:
        bounded = bound.bounded(values) if values.size else values.astype(np.float64)
        total = np.bincount(index, weights=bounded, minlength=subjects.size + 1)
        count = np.bincount(index, minlength=subjects.size + 1)
        out = np.where(count > 0, total / np.maximum(count, 1), bound.fill)
        return out[: subjects.size]

    high = metrics.loss_bound
    return RowMetrics(
        losses=means(metrics.losses, MeanOf(high, high)),
        correct=None if metrics.correct is None else means(metrics.correct, MeanOf(1.0, 0.0)),
        loss_bound=high,
    )
