"""The cart: what publishing one model's weights would cost now.

The cart is kept per data source (a dataset; its assets share one row space, so row
`i` of its images and row `i` of its labels are one record). For each source it holds

- `sampled`: the sum of the Poisson-subsampled Gaussian curves of every `fit`;
- `pool`: the rows that were ever in a fit's Poisson pool (it only grows: a row that
  was in one fit's pool pays for that fit however later pools look);
- `rho`: per row, the summed zCDP rho of the plain Gaussian releases that row took
  part in (`step` batches, validation metrics). The Gaussian's RDP is alpha * rho, so
  one float per row is the whole per-row curve;
- the running maxima of `rho` over rows in the pool and over rows outside it.

A row in the pool costs at most `sampled + alpha * rho[row]`; a row outside it costs
`alpha * rho[row]`. The worst row sets a source's cost, order by order:

    max(sampled + alpha * max_rho_pool, alpha * max_rho_out)

so Gaussian releases on disjoint rows do not add up (parallel composition) while
releases on the same row do. Sources add up, since two datasets may hold one person.
Every update is O(rows touched) and `curve()` is O(sources x orders), so a publish
never depends on how long training ran nor on how many rows a dataset has.

Persistence is split in two so a server can keep the small part in JSON and the big
part in `.npy` files: `state_dict()` (JSON-safe: counts, curves as lists, maxima) and
`arrays()` (per source: `rho` float64 and `pool` bool, one entry per row).
`load_state_dict(state, arrays)` takes both back and checks them against each other;
`Cart.curve_from_state(state)` prices a stored cart from the JSON part alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from veil._exceptions import ValidationError
from veil.privacy.curve import ORDERS, RdpCurve
from veil.privacy.mechanisms import gaussian_rho, poisson_gaussian

__all__ = ["Cart", "CartState", "SourceArrays", "SourceState"]

STATE_VERSION = 1

_ORDERS = np.array(ORDERS, dtype=np.float64)


class SourceState(TypedDict):
    n_rows: int
    sampled: list[float]
    max_rho_pool: float
    max_rho_out: float


class CartState(TypedDict):
    version: int
    sources: dict[str, SourceState]


class SourceArrays(TypedDict):
    rho: np.ndarray
    pool: np.ndarray


def _source_cost(sampled: np.ndarray, max_rho_pool: float, max_rho_out: float) -> np.ndarray:
    """The worst row's curve: a row is either in the Poisson pool or outside it."""
    return np.maximum(sampled + _ORDERS * max_rho_pool, _ORDERS * max_rho_out)


def _check_keys(got: Mapping[str, Any], expected: Iterable[str], where: str) -> None:
    if not isinstance(got, Mapping):
        raise ValidationError(f"{where} expects a mapping. Received: {type(got).__name__}")
    expected = set(expected)
    missing, unknown = sorted(expected - set(got)), sorted(set(got) - expected)
    if missing or unknown:
        raise ValidationError(
            f"{where} expects keys {sorted(expected)}. Missing: {missing}; unknown: {unknown}",
            missing=missing,
            unknown=unknown,
        )


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValidationError(f"A data source key is a non-empty string. Received: {key!r}")
    return key


def _check_n_rows(n_rows: int) -> int:
    if not isinstance(n_rows, numbers.Integral) or isinstance(n_rows, bool) or n_rows < 1:
        raise ValidationError(f"Expected n_rows as an integer >= 1. Received: n_rows={n_rows!r}")
    return int(n_rows)


def _check_rho(value: float, name: str) -> float:
    if not isinstance(value, numbers.Real) or not (0 <= value < math.inf):
        raise ValidationError(f"Expected {name} as a finite float >= 0. Received: {value!r}")
    return float(value)


def _as_rows(rows: npt.ArrayLike, *, n_rows: int | None, name: str = "rows") -> np.ndarray:
    """Row indices as a 1-D integer array inside [0, n_rows); negatives never wrap."""
    array = np.asarray(rows)
    if array.size == 0:
        return np.empty(0, dtype=np.intp)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValidationError(
            f"Expected {name} as a 1-D array of integer row indices. "
            f"Received: dtype={array.dtype}, shape={array.shape}"
        )
    low, high = int(array.min()), int(array.max())
    if low < 0 or (n_rows is not None and high >= n_rows):
        raise ValidationError(
            f"Expected {name} in [0, {n_rows if n_rows is not None else 'n_rows'}). "
            f"Received: indices from {low} to {high}",
            low=low,
            high=high,
            n_rows=n_rows,
        )
    return array.astype(np.intp, copy=False)


def _unique_counts(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct rows and how often each occurs (by sorting: O(k log k))."""
    ordered = np.sort(rows)
    if ordered.size == 0:
        return ordered, np.zeros(0, dtype=np.intp)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return ordered[starts], np.diff(np.r_[starts, ordered.size])


def _check_distinct(rows: np.ndarray, what: str) -> None:
    unique, _ = _unique_counts(rows)
    if unique.size != rows.size:
        raise ValidationError(
            f"Expected {what} to list each row once. "
            f"Received: {rows.size} indices, {rows.size - unique.size} of them repeats"
        )


def _masked_max(values: np.ndarray, mask: np.ndarray) -> float:
    return float(np.max(values, where=mask, initial=0.0))


@dataclass
class _Source:
    n_rows: int
    sampled: RdpCurve
    rho: np.ndarray
    pool: np.ndarray
    max_rho_pool: float = 0.0
    max_rho_out: float = 0.0

    @classmethod
    def empty(cls, n_rows: int) -> _Source:
        return cls(
            n_rows=n_rows,
            sampled=RdpCurve.zero(),
            rho=np.zeros(n_rows, dtype=np.float64),
            pool=np.zeros(n_rows, dtype=bool),
        )

    def recompute_maxima(self) -> None:
        self.max_rho_pool = _masked_max(self.rho, self.pool)
        self.max_rho_out = _masked_max(self.rho, ~self.pool)

    def cost(self) -> np.ndarray:
        return _source_cost(self.sampled.values, self.max_rho_pool, self.max_rho_out)

    def copy(self) -> _Source:
        return _Source(
            n_rows=self.n_rows,
            sampled=self.sampled,
            rho=self.rho.copy(),
            pool=self.pool.copy(),
            max_rho_pool=self.max_rho_pool,
            max_rho_out=self.max_rho_out,
        )


@dataclass(frozen=True)
class _FitPreview:
    """What one source would cost after a planned fit, for any noise level.

    Built once in O(n_rows) without copying `rho`; each `curve(...)` is then
    O(sources x orders), which is what makes calibrating sigma cheap.
    """

    costs: tuple[np.ndarray, ...]  # every source's cost now, in the order curve() sums
    index: int  # the planned source's slot in `costs`
    sampled: RdpCurve
    pool_plain: float  # max rho over pool rows (after the fit) without validation releases
    pool_val: float  # ... over pool rows with them
    out_plain: float  # max rho over rows outside the pool without validation releases
    out_val: float  # ... outside the pool with them

    def curve(self, added_sampled: RdpCurve, val_rho: float) -> RdpCurve:
        max_pool = max(self.pool_plain, self.pool_val + val_rho)
        max_out = max(self.out_plain, self.out_val + val_rho)
        total = np.zeros_like(_ORDERS)
        for i, cost in enumerate(self.costs):
            if i == self.index:
                cost = _source_cost((self.sampled + added_sampled).values, max_pool, max_out)
            total += cost
        return RdpCurve._of(total)


class Cart:
    """The RDP curve that publishing one model's weights would charge now."""

    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}

    def __repr__(self) -> str:
        return f"Cart(sources={self.sources!r})"

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(sorted(self._sources))

    def n_rows(self, key: str) -> int:
        return self._source(key).n_rows

    def _source(self, key: str) -> _Source:
        try:
            return self._sources[_check_key(key)]
        except KeyError:
            raise ValidationError(
                f"The cart has no data source {key!r}; call ensure_source(key, n_rows) first. "
                f"Known sources: {self.sources}",
                key=key,
            ) from None

    def ensure_source(self, key: str, n_rows: int) -> None:
        """Register a dataset of `n_rows` rows; a no-op if it is known with that size."""
        key, n_rows = _check_key(key), _check_n_rows(n_rows)
        source = self._sources.get(key)
        if source is None:
            self._sources[key] = _Source.empty(n_rows)
        elif source.n_rows != n_rows:
            raise ValidationError(
                f"Data source {key!r} has {source.n_rows} rows in this cart. "
                f"Received: n_rows={n_rows}",
                expected=source.n_rows,
                received=n_rows,
            )

    def add_sampled(self, key: str, *, q: float, sigma: float, steps: int) -> None:
        """Charge `steps` Poisson-subsampled Gaussian steps of a fit on `key`. O(1)."""
        source = self._source(key)
        source.sampled = source.sampled + poisson_gaussian(q, sigma, steps)

    def mark_pool(self, key: str, rows: npt.ArrayLike) -> None:
        """Add `rows` (each listed once) to the Poisson pool of `key`; call before a fit.

        O(n_rows): the maxima are recomputed, since rows move from outside to inside.
        """
        source = self._source(key)
        rows = _as_rows(rows, n_rows=source.n_rows)
        # q = batch_size / n_train is each row's sampling rate only if no row repeats.
        _check_distinct(rows, "a Poisson pool")
        source.pool[rows] = True
        source.recompute_maxima()

    def add_gaussian_rows(
        self, key: str, rows: npt.ArrayLike, *, sigma: float, count: int = 1
    ) -> None:
        """Charge `count` Gaussian releases, each over the batch `rows`. O(len(rows)).

        A row listed m times in the batch contributes m clipped terms to the noised
        sum: its sensitivity is m, so it pays m^2 * rho per release, not m * rho.
        To record several different batches, call once per batch.
        """
        source = self._source(key)
        rows = _as_rows(rows, n_rows=source.n_rows)
        if not isinstance(count, numbers.Integral) or isinstance(count, bool) or count < 0:
            raise ValidationError(f"Expected an integer count >= 0. Received: count={count!r}")
        rho = gaussian_rho(sigma)
        if rows.size == 0 or count == 0:
            return
        unique, multiplicity = _unique_counts(rows)
        source.rho[unique] += (int(count) * rho) * multiplicity.astype(np.float64) ** 2
        touched = source.rho[unique]
        in_pool = source.pool[unique]
        if in_pool.any():
            source.max_rho_pool = max(source.max_rho_pool, float(touched[in_pool].max()))
        if not in_pool.all():
            source.max_rho_out = max(source.max_rho_out, float(touched[~in_pool].max()))

    def add_gaussian_all(self, key: str, *, sigma: float, count: int = 1) -> None:
        """Charge `count` Gaussian releases that may involve any row of `key`: where rows
        are a dataset's data subjects and a batch's subjects are private, a batch could
        hold any of them. O(n_rows), and the same whatever the batch was."""
        source = self._source(key)
        if not isinstance(count, numbers.Integral) or isinstance(count, bool) or count < 0:
            raise ValidationError(f"Expected an integer count >= 0. Received: count={count!r}")
        source.rho += int(count) * gaussian_rho(sigma)
        source.recompute_maxima()

    def curve(self) -> RdpCurve:
        """The curve publishing now would charge (before subtracting what was paid)."""
        total = np.zeros_like(_ORDERS)
        for key in sorted(self._sources):
            total += self._sources[key].cost()
        return RdpCurve._of(total)

    def epsilon(self, delta: float) -> float:
        return self.curve().epsilon(delta)

    def copy(self) -> Cart:
        cart = Cart()
        cart._sources = {key: source.copy() for key, source in self._sources.items()}
        return cart

    def merge(self, other: Cart) -> Cart:
        """A new cart holding the operations of both (their composition)."""
        merged = self.copy()
        for key, theirs in other._sources.items():
            mine = merged._sources.get(key)
            if mine is None:
                merged._sources[key] = theirs.copy()
                continue
            if mine.n_rows != theirs.n_rows:
                raise ValidationError(
                    f"Cannot merge carts: data source {key!r} has {mine.n_rows} rows in one "
                    f"and {theirs.n_rows} in the other",
                    key=key,
                )
            mine.sampled = mine.sampled + theirs.sampled
            mine.rho += theirs.rho
            mine.pool |= theirs.pool
            mine.recompute_maxima()
        return merged

    def _preview_fit(
        self, key: str, *, train_rows: np.ndarray, val_rows: np.ndarray
    ) -> _FitPreview:
        """Freeze what a fit on `key` would change, for `calibration` (must not mutate)."""
        keys = sorted(set(self._sources) | {key})
        costs = tuple(
            self._sources[k].cost() if k in self._sources else np.zeros_like(_ORDERS) for k in keys
        )
        source = self._sources.get(key)
        if source is None:
            # A source the cart has not seen: every row's rho is 0 and no pool yet.
            val_in_pool = np.isin(val_rows, train_rows)
            return _FitPreview(
                costs=costs,
                index=keys.index(key),
                sampled=RdpCurve.zero(),
                pool_plain=0.0,
                pool_val=0.0 if val_in_pool.any() else -math.inf,
                out_plain=0.0,
                out_val=0.0 if not val_in_pool.all() else -math.inf,
            )
        pool = source.pool.copy()
        pool[train_rows] = True
        is_val = np.zeros(source.n_rows, dtype=bool)
        is_val[val_rows] = True
        plain = ~is_val
        return _FitPreview(
            costs=costs,
            index=keys.index(key),
            sampled=source.sampled,
            pool_plain=_masked_max(source.rho, pool & plain),
            pool_val=float(np.max(source.rho, where=pool & is_val, initial=-math.inf)),
            out_plain=_masked_max(source.rho, ~pool & plain),
            out_val=float(np.max(source.rho, where=~pool & is_val, initial=-math.inf)),
        )

    def state_dict(self) -> CartState:
        """The JSON-safe part of the cart; see `arrays()` for the per-row part."""
        return {
            "version": STATE_VERSION,
            "sources": {
                key: {
                    "n_rows": source.n_rows,
                    "sampled": source.sampled.to_list(),
                    "max_rho_pool": source.max_rho_pool,
                    "max_rho_out": source.max_rho_out,
                }
                for key, source in sorted(self._sources.items())
            },
        }

    def arrays(self) -> dict[str, SourceArrays]:
        """Per source, read-only views of `rho` (float64) and `pool` (bool), n_rows long."""
        out: dict[str, SourceArrays] = {}
        for key, source in sorted(self._sources.items()):
            rho, pool = source.rho.view(), source.pool.view()
            rho.flags.writeable = False
            pool.flags.writeable = False
            out[key] = {"rho": rho, "pool": pool}
        return out

    @staticmethod
    def _parse_state(state: Mapping[str, Any]) -> dict[str, tuple[int, RdpCurve, float, float]]:
        _check_keys(state, ("version", "sources"), "A cart state")
        if state["version"] != STATE_VERSION:
            raise ValidationError(
                f"A cart state expects version {STATE_VERSION}. Received: {state['version']!r}",
                expected=STATE_VERSION,
                received=state["version"],
            )
        sources = state["sources"]
        if not isinstance(sources, Mapping):
            raise ValidationError(
                f"A cart state expects 'sources' as a mapping. Received: {type(sources).__name__}"
            )
        parsed = {}
        for key, entry in sources.items():
            _check_keys(entry, SourceState.__annotations__, f"Cart source {key!r}")
            parsed[_check_key(key)] = (
                _check_n_rows(entry["n_rows"]),
                RdpCurve.from_list(entry["sampled"]),
                _check_rho(entry["max_rho_pool"], "max_rho_pool"),
                _check_rho(entry["max_rho_out"], "max_rho_out"),
            )
        return parsed

    @staticmethod
    def curve_from_state(state: Mapping[str, Any]) -> RdpCurve:
        """`curve()` of a stored cart, from `state_dict()` alone (no per-row arrays)."""
        total = np.zeros_like(_ORDERS)
        for _, (_, sampled, max_pool, max_out) in sorted(Cart._parse_state(state).items()):
            total += _source_cost(sampled.values, max_pool, max_out)
        return RdpCurve._of(total)

    def load_state_dict(
        self, state: Mapping[str, Any], arrays: Mapping[str, Mapping[str, np.ndarray]]
    ) -> None:
        """Replace this cart by a stored one; nothing changes if any check fails."""
        parsed = self._parse_state(state)
        _check_keys(arrays, parsed, "Cart arrays")
        sources: dict[str, _Source] = {}
        for key, (n_rows, sampled, max_pool, max_out) in parsed.items():
            _check_keys(arrays[key], SourceArrays.__annotations__, f"Cart arrays of {key!r}")
            rho = np.array(arrays[key]["rho"], copy=True)
            pool = np.array(arrays[key]["pool"], copy=True)
            if rho.dtype != np.float64 or rho.shape != (n_rows,):
                raise ValidationError(
                    f"Cart arrays of {key!r}: expected rho as float64 of shape ({n_rows},). "
                    f"Received: {rho.dtype} of shape {rho.shape}"
                )
            if pool.dtype != np.bool_ or pool.shape != (n_rows,):
                raise ValidationError(
                    f"Cart arrays of {key!r}: expected pool as bool of shape ({n_rows},). "
                    f"Received: {pool.dtype} of shape {pool.shape}"
                )
            if not np.all(np.isfinite(rho)) or np.any(rho < 0):
                raise ValidationError(
                    f"Cart arrays of {key!r}: expected rho finite and >= 0 in every row"
                )
            source = _Source(n_rows=n_rows, sampled=sampled, rho=rho, pool=pool)
            source.recompute_maxima()
            if (source.max_rho_pool, source.max_rho_out) != (max_pool, max_out):
                raise ValidationError(
                    f"Cart source {key!r}: the stored maxima do not match its arrays. "
                    f"Expected: max_rho_pool={source.max_rho_pool}, "
                    f"max_rho_out={source.max_rho_out}. Received: {max_pool}, {max_out}"
                )
            sources[key] = source
        self._sources = sources
