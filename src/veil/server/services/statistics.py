"""Per-channel mean and standard deviation of an asset: a charged DP release, what
`nn.Normalization.adapt` asks for.

Each value is mapped into [-1, 1] with the asset's declared bounds (public: an owner
declares them at upload, uint8 and bool default to their full range): z = (x - mid) /
half. A row's per-channel mean of z and mean of z^2 form a vector of 2C numbers with L2
norm at most sqrt(2C); the release is the mean of those vectors over the pointer's n
rows (`MeanOfRows`, sensitivity sqrt(2C) / n), noised once and charged as one Gaussian
on the user's ledger (no model is involved, so there is no cart). Means and standard
deviations are computed from the noised moments: post-processing, which costs nothing.
Where the dataset's unit is the data subject, see `_moments_query`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from veil._exceptions import ValidationError
from veil.privacy import MeanOfRows, gaussian
from veil.server.db.engine import Database
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.ledger import ReleaseRow
from veil.server.services import ledger
from veil.server.services.bounds import mid_half
from veil.server.services.datasets import ResolvedPointer, resolve_pointer
from veil.server.services.node import get_node
from veil.server.services.releases import Query, noise_for, release
from veil.server.services.units import Units, dataset_units
from veil.server.services.upload_declarations import FULL_RANGE
from veil.server.storage.arrays import ArrayStore
from veil.server.storage.files import NodeFiles

__all__ = ["KIND_STATISTICS", "StatisticsQuote", "quote_statistics", "release_statistics"]

KIND_STATISTICS = "statistics"
_CHUNK_BYTES = 1 << 24
_MIN_STD = 1e-6  # the least std a Normalization layer takes


@dataclass(frozen=True)
class StatisticsQuote:
    """What releasing a pointer's statistics would cost, before anything is spent."""

    rows: int
    channels: int
    sigma: float
    epsilon: float  # the Gaussian's own epsilon
    cost: float  # what it would add to the budget spent
    spent: float
    remaining: float
    delta: float


def _bounds(pointer: ResolvedPointer) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per channel: declared, or the full range of uint8 and bool."""
    if pointer.bounds is not None:
        return pointer.bounds.arrays(_channels(pointer))
    default = FULL_RANGE.get(np.dtype(pointer.dtype).str)
    if default is None:
        raise ValidationError(
            f"Statistics of {pointer.asset_name!r} need declared bounds to know how far one "
            f"row can move them. Received: a {pointer.dtype} asset declared without bounds; "
            "ask its owner to declare them."
        )
    return np.full(_channels(pointer), default[0]), np.full(_channels(pointer), default[1])


def _channels(pointer: ResolvedPointer) -> int:
    return int(pointer.shape[1]) if len(pointer.shape) > 1 else 1


def _row_moments(pointer: ResolvedPointer, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(n, 2C): each row's per-channel mean of z and of z^2, z = x mapped into [-1, 1]
    by its channel's bounds."""
    channels = _channels(pointer)
    along = (1, channels, *([1] * (len(pointer.shape) - 2)))
    mid, half = mid_half(low, high)
    mid, half = mid.reshape(along), np.maximum(half, 1e-12).reshape(along)
    row_items = max(1, math.prod(pointer.shape[1:]))
    step = max(1, _CHUNK_BYTES // (row_items * 8))
    parts = []
    for start in range(0, len(pointer.rows), step):
        block = np.asarray(pointer.array[pointer.rows[start : start + step]], dtype=np.float64)
        block = block.reshape(block.shape[0], *(pointer.shape[1:] or (1,)))
        z = np.clip((block - mid) / half, -1.0, 1.0).reshape(block.shape[0], channels, -1)
        parts.append(np.concatenate([z.mean(axis=2), np.square(z).mean(axis=2)], axis=1))
    return np.concatenate(parts)


def quote_statistics(
    db: Database,
    arrays: ArrayStore,
    *,
    user: UserRow,
    pointer_id: str,
    sigma: float | None = None,
    epsilon: float | None = None,
) -> StatisticsQuote:
    with db.session() as session:
        pointer = resolve_pointer(session, arrays, user=user, pointer_id=pointer_id)
        _bounds(pointer)
        delta = get_node(session).delta
        sigma = noise_for(sigma=sigma, epsilon=epsilon, count=1, delta=delta)
        budget = ledger.budget(session, user=user, delta=delta)
        spent = ledger.spent_curve(session, user_id=user.id)
    added = ledger.added_epsilon(spent, gaussian(sigma), delta=delta)
    return StatisticsQuote(
        rows=len(pointer.rows),
        channels=_channels(pointer),
        sigma=sigma,
        epsilon=gaussian(sigma).epsilon(delta),
        cost=added,
        spent=budget.spent,
        remaining=budget.remaining,
        delta=delta,
    )


def release_statistics(
    db: Database,
    arrays: ArrayStore,
    files: NodeFiles,
    *,
    user: UserRow,
    pointer_id: str,
    sigma: float | None = None,
    epsilon: float | None = None,
) -> ReleaseRow:
    """Release the pointer's per-channel mean and std, noised and charged."""
    with db.session() as session:  # read and compute with no lock held
        pointer = resolve_pointer(session, arrays, user=user, pointer_id=pointer_id)
        delta = get_node(session).delta
        units = dataset_units(session, arrays, pointer.dataset_id)
    low, high = _bounds(pointer)
    sigma = noise_for(sigma=sigma, epsilon=epsilon, count=1, delta=delta)
    channels = _channels(pointer)
    query = _moments_query(pointer, units, _row_moments(pointer, low, high), channels)
    with db.write_session() as session:
        outcome = release(
            session,
            files,
            user=user,
            model=None,
            kind=KIND_STATISTICS,
            mechanism="gaussian",
            params={
                "sigma": sigma,
                "target_epsilon": epsilon,
                "asset": pointer.asset_name,
                "n_rows": len(pointer.rows),
                "bounds": [low.tolist(), high.tolist()],
            },
            delta=delta,
            queries=[query],
            sigma=sigma,
            derive=lambda values: _normalization(values["moments"], channels, low, high),
        )
        session.commit()
    return outcome.release


def _moments_query(
    pointer: ResolvedPointer, units: Units, moments: np.ndarray, channels: int
) -> Query:
    """The mean of the rows' moment vectors. Where the unit is the data subject: over a
    whole asset, the mean over its S subjects (public) of each subject's mean vector,
    so one subject moves one of S entries; over a slice (whose subjects are private),
    the mean over its rows with each subject's rows clipped together."""
    bound = MeanOfRows(math.sqrt(2 * channels))
    common = {"name": "moments", "source": pointer.dataset_id, "n_source_rows": units.n}
    ranks = units.subjects_of(pointer.rows)
    whole = len(pointer.rows) == pointer.n_asset_rows
    if ranks is None or not whole:
        return Query(rows=pointer.rows, values=moments, bound=bound, groups=ranks, **common)
    sums = np.zeros((units.n, moments.shape[1]))
    np.add.at(sums, ranks, moments)
    means = sums / np.maximum(np.bincount(ranks, minlength=units.n), 1)[:, None]
    return Query(rows=np.arange(units.n), values=means, bound=bound, **common)


def _normalization(
    moments: dict, channels: int, low: np.ndarray, high: np.ndarray
) -> dict[str, list[float]]:
    """Mean and std per channel from the noised moments, kept inside what is possible.

    A variance is never taken below the noise on it: a normalisation that scales too
    little is harmless, one that divides by a noise-sized std is not.
    """
    mid, half = mid_half(low, high)  # so mean stays in [low, high], std in [0, half]
    noised = np.asarray(moments["value"], dtype=np.float64)
    mean_z = np.clip(noised[:channels], -1.0, 1.0)
    var_z = np.clip(noised[channels:] - mean_z**2, min(moments["std"], 1.0), 1.0)
    std = np.maximum(half * np.sqrt(var_z), _MIN_STD)
    return {"mean": (mid + half * mean_z).tolist(), "std": std.tolist()}
