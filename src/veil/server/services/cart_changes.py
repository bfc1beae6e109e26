"""A flow III step's cart, stored as the rows the step changed.

A cart holds two numbers per row of each dataset it touched (`privacy.Cart`). A step
changes only its batch's rows, so storing the whole cart with every step would make a
step's write grow with the dataset: 2.4 MB per step on a 262,144-row dataset, most of
the step's time. Instead each version a step makes gets one `cart_changes` row, in the
step's own transaction:

- `full`: the cart's arrays whole (every source), when the version before it kept its
  cart elsewhere (files, or a state blob), when a source changed in every row (a step
  charged by data subject), or when the changes since the last full row would pass a
  quarter of the cart's rows; so a full copy costs at most four times the changes it
  replaces, and reading a version back replays at most a quarter of its rows;
- otherwise the changed rows of each changed source, with their values after the step.

A version's cart is its newest full row at or before it, with the changes after that
applied in order. The rows before the previous full row are deleted when a full row is
written: the chain that ended at the version before stays whole for a reader that saw
that version (as its files or state would).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.orm import Session

from veil.privacy import Cart, SourceArrays
from veil.server.db.tables.models import CartChangeRow
from veil.server.storage import blobs

__all__ = ["CartChain", "CartChange", "cart_change", "load_chain", "record_change"]

# A full row is written once the changes since the last one would pass this share of
# the cart's rows.
FULL_AFTER = 0.25

_table = CartChangeRow.__table__
_INSERT = insert(_table)
_FORGET = delete(_table).where(
    _table.c.model_id == bindparam("b_id"), _table.c.version < bindparam("b_below")
)
_CHAIN = (
    select(_table.c.version, _table.c.full, _table.c.data)
    .where(_table.c.model_id == bindparam("b_id"), _table.c.version <= bindparam("b_version"))
    .order_by(_table.c.version.desc())
)


@dataclass(frozen=True)
class CartChain:
    """Where a version's cart is in `cart_changes`: the full row at `base`, and
    `entries` rows changed in the versions after it."""

    base: int
    entries: int


@dataclass(frozen=True)
class CartChange:
    """One version's `cart_changes` row, encoded, with the chain it ends."""

    version: int
    full: bool
    data: bytes
    chain: CartChain
    forget_below: int | None  # with a full row: older rows go


def cart_change(
    cart: Cart,
    *,
    version: int,
    changed: Mapping[str, np.ndarray | None],
    chain: CartChain | None,
) -> CartChange:
    """Version `version`'s row for `cart`, whose `changed` sources differ from the
    version before only in the listed rows (None: in any row); `chain` is where the
    version before keeps its cart here (None: somewhere else)."""
    total = sum(cart.n_rows(key) for key in cart.sources)
    whole = any(rows is None for rows in changed.values())
    rows = {} if whole else {k: np.unique(np.asarray(r, np.int64)) for k, r in changed.items()}
    entries = sum(len(picked) for picked in rows.values())  # as `load_chain` counts them
    if chain is None or whole or chain.entries + entries > FULL_AFTER * total:
        return CartChange(
            version=version,
            full=True,
            data=_encode(cart.arrays(), None),
            chain=CartChain(base=version, entries=0),
            forget_below=version if chain is None else chain.base,
        )
    return CartChange(
        version=version,
        full=False,
        data=_encode(cart.arrays(), rows),  # type: ignore[arg-type]
        chain=CartChain(base=chain.base, entries=chain.entries + entries),
        forget_below=None,
    )


def _encode(arrays: Mapping[str, SourceArrays], rows: Mapping[str, np.ndarray] | None) -> bytes:
    """Safetensors: per source i, `rho_i` and `pool_i` whole, or at `rows_i` only."""
    blob: dict[str, np.ndarray] = {}
    keys = sorted(arrays if rows is None else rows)
    for index, key in enumerate(keys):
        rho, pool = arrays[key]["rho"], arrays[key]["pool"]
        if rows is None:
            blob[f"rho_{index}"], blob[f"pool_{index}"] = rho, pool
        else:
            picked = rows[key]
            blob[f"rows_{index}"] = picked
            blob[f"rho_{index}"], blob[f"pool_{index}"] = rho[picked], pool[picked]
    sizes = {key: len(arrays[key]["rho"]) for key in keys}
    return blobs.pack(blob, {"sources": keys, "n_rows": sizes})


def record_change(session: Session, *, model_id: str, change: CartChange) -> None:
    """Insert the row (and, with a full one, forget the chains before the last); the
    caller commits."""
    connection = session.connection()
    connection.execute(
        _INSERT,
        {"model_id": model_id, "version": change.version, "full": change.full, "data": change.data},
    )
    if change.forget_below is not None:
        connection.execute(_FORGET, {"b_id": model_id, "b_below": change.forget_below})


def load_chain(
    session: Session, *, model_id: str, version: int
) -> tuple[dict[str, SourceArrays], CartChain] | None:
    """The cart arrays of `version` and its chain, if a step made that version (None if
    its cart is kept elsewhere)."""
    found = session.connection().execute(_CHAIN, {"b_id": model_id, "b_version": version})
    chain = []
    for row in found:
        if not chain and row.version != version:
            return None
        chain.append(row)
        if row.full:
            break
    if not chain or not chain[-1].full:
        return None
    arrays: dict[str, SourceArrays] = {}
    entries = 0
    for row in reversed(chain):
        blob, header = blobs.unpack(row.data)
        for index, key in enumerate(header["sources"]):
            rho, pool = blob[f"rho_{index}"], blob[f"pool_{index}"]
            if row.full:
                arrays[key] = {"rho": rho.copy(), "pool": pool.copy()}
                continue
            n_rows = int(header["n_rows"][key])
            if key not in arrays:  # a source this model's cart first met in this step
                arrays[key] = {"rho": np.zeros(n_rows), "pool": np.zeros(n_rows, dtype=bool)}
            picked = blob[f"rows_{index}"]
            arrays[key]["rho"][picked] = rho
            arrays[key]["pool"][picked] = pool
            entries += len(picked)
    return arrays, CartChain(base=chain[-1].version, entries=entries)
