"""Datasets and pointers: listing, deleting, slicing, mocks, and resolving a pointer.

A pointer id names either an asset (all its rows) or a view: `range(start, stop, step)`
of an asset's rows, made by one user's slicing and kept in `asset_views` (no data is
copied). Views always hold base-asset coordinates, so slicing a view composes.

Who sees what: dataset metadata, assets and mocks are public to every logged-in user; a
view belongs to the user who made it (the admin sees all); private values leave the node
only to the admin (`.get()`), for everyone else only through a release (`publish()`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Row, bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from veil._exceptions import Conflict, NotFound, OutOfRange, PermissionDenied, ValidationError
from veil.server.db.tables.accounts import ROLE_ADMIN, UserRow
from veil.server.db.tables.datasets import AssetRow, AssetViewRow, DatasetRow
from veil.server.services.bounds import Bounds
from veil.server.storage.arrays import ArrayStore
from veil.server.storage.npy import header_bytes, iter_npy

__all__ = [
    "PRIVATE_DATA_MESSAGE",
    "DatasetListing",
    "PointerInfo",
    "ResolvedPointer",
    "asset_info",
    "delete_dataset",
    "get_dataset",
    "list_datasets",
    "pointer_info",
    "private_npy",
    "read_mock",
    "resolve_pointer",
    "slice_pointer",
]

PRIVATE_DATA_MESSAGE = (
    "Private data leaves the node only through publish(): a data scientist cannot read "
    "the values of an asset. Train on the pointer, then publish the result (charged to "
    "your privacy budget); use .mock for a public stand-in with the same shape and dtype."
)
_DOWNLOAD_CHUNK = 8 * 1024**2


@dataclass(frozen=True)
class ResolvedPointer:
    """What a pointer id stands for on the node: the rows of one asset's array."""

    dataset_id: str
    asset_id: str
    asset_name: str
    array: np.ndarray  # the whole asset, memory-mapped read-only
    rows: np.ndarray  # int64 indices into the asset's first axis
    n_asset_rows: int
    shape: tuple[int, ...]  # public shape of the view
    dtype: str
    bounds: Bounds | None  # as the owner declared them: public


@dataclass(frozen=True)
class PointerInfo:
    """The public face of a pointer (an asset or a view of one)."""

    id: str
    dataset_id: str
    asset_id: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    stop: int
    step: int
    is_view: bool
    bounds: Bounds | None
    mock_source: str
    mock_rows: int


@dataclass(frozen=True)
class DatasetListing:
    dataset: DatasetRow
    assets: list[AssetRow]


def list_datasets(session: Session) -> list[DatasetListing]:
    datasets = list(
        session.scalars(select(DatasetRow).order_by(DatasetRow.created_at, DatasetRow.id))
    )
    assets: dict[str, list[AssetRow]] = {d.id: [] for d in datasets}
    for asset in session.scalars(select(AssetRow).order_by(AssetRow.position)):
        if asset.dataset_id in assets:
            assets[asset.dataset_id].append(asset)
    return [DatasetListing(d, assets[d.id]) for d in datasets]


def get_dataset(session: Session, *, name_or_id: str) -> DatasetListing:
    dataset = (
        session.get(DatasetRow, name_or_id)
        or session.scalars(select(DatasetRow).where(DatasetRow.name == name_or_id)).first()
    )
    if dataset is None:
        names = list(session.scalars(select(DatasetRow.name).order_by(DatasetRow.created_at)))
        raise NotFound(f"No dataset {name_or_id!r}. Datasets: {names}", dataset=name_or_id)
    assets = session.scalars(
        select(AssetRow).where(AssetRow.dataset_id == dataset.id).order_by(AssetRow.position)
    )
    return DatasetListing(dataset, list(assets))


def delete_dataset(session: Session, arrays: ArrayStore, *, name_or_id: str) -> None:
    """Remove a dataset's rows (its assets and views go with it) and then its files."""
    dataset_id = get_dataset(session, name_or_id=name_or_id).dataset.id
    try:
        session.execute(delete(DatasetRow).where(DatasetRow.id == dataset_id))
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"Dataset {name_or_id!r} is still in use (models or releases refer to it).",
            dataset=name_or_id,
        ) from None
    # After the commit: a crash here leaves files without rows, which are swept later.
    arrays.remove_dataset(dataset_id)


def asset_info(asset: AssetRow) -> PointerInfo:
    """The pointer to all rows of an asset, as listed with its dataset."""
    return _info(asset, range(int(asset.n_rows)), None)


def pointer_info(session: Session, *, user: UserRow, pointer_id: str) -> PointerInfo:
    asset, rows, view_id = _lookup(session, user=user, pointer_id=pointer_id)
    return _info(asset, rows, view_id)


def slice_pointer(
    session: Session,
    *,
    user: UserRow,
    pointer_id: str,
    start: int | None,
    stop: int | None,
    step: int | None,
) -> PointerInfo:
    """A new pointer to `pointer[start:stop:step]` (Python's rules), as a view of the asset.

    A slice that selects no rows raises `OutOfRange`, naming the pointer's row count.
    """
    asset, rows, view_id = _lookup(session, user=user, pointer_id=pointer_id)
    picked = _pick(asset, rows, view_id, start=start, stop=stop, step=step)
    existing = session.scalars(
        select(AssetViewRow).where(
            AssetViewRow.owner_id == user.id,
            AssetViewRow.asset_id == asset.id,
            AssetViewRow.start == picked.start,
            AssetViewRow.stop == picked.stop,
            AssetViewRow.step == picked.step,
        )
    ).first()
    view = existing or AssetViewRow(
        asset_id=asset.id,
        owner_id=user.id,
        start=picked.start,
        stop=picked.stop,
        step=picked.step,
    )
    if existing is None:
        session.add(view)
        session.commit()
    return _info(asset, picked, view.id)


def read_mock(
    session: Session, arrays: ArrayStore, *, user: UserRow, pointer_id: str
) -> np.ndarray:
    """The pointer's mock: the asset's mock sliced alike, as far as the mock's rows go."""
    asset, rows, _ = _lookup(session, user=user, pointer_id=pointer_id)
    with _deleted_meanwhile(pointer_id):
        mock = arrays.load(arrays.mock_path(asset.dataset_id, asset.id))
    covered = _mock_range(rows, mock.shape[0])
    return mock[covered.start : covered.stop : covered.step]


def private_npy(
    session: Session, arrays: ArrayStore, *, user: UserRow, pointer_id: str
) -> tuple[int, Iterator[bytes]]:
    """The pointer's private values as .npy bytes (size, chunks): for the admin only."""
    asset, rows, _ = _lookup(session, user=user, pointer_id=pointer_id)
    if user.role != ROLE_ADMIN:
        raise PermissionDenied(PRIVATE_DATA_MESSAGE, pointer=pointer_id)
    with _deleted_meanwhile(pointer_id):
        array = arrays.open(arrays.asset_path(asset.dataset_id, asset.id))
    shape = (len(rows), *array.shape[1:])
    size = len(header_bytes(array.dtype, shape)) + math.prod(shape) * array.dtype.itemsize
    return size, iter_npy(array, rows, chunk_bytes=_DOWNLOAD_CHUNK)


def resolve_pointer(
    session: Session,
    arrays: ArrayStore,
    *,
    user: UserRow,
    pointer_id: str,
    within: slice | None = None,
    known: bool = False,
) -> ResolvedPointer:
    """The asset array and row indices a pointer id (asset or view) stands for, or with
    `within`, `pointer[within]`: checked exactly as slicing the pointer would be, with
    no view stored (a step or an evaluation names its rows in its own request).

    NotFound for an id that is neither, and for another user's view (the admin may use
    any view). The array is memory-mapped, so nothing is read until rows are indexed.
    `known=True` may answer from what an earlier call found (an asset or a view never
    changes while its dataset exists): one light query instead of two or three.
    """
    asset, rows, view_id = _lookup(session, user=user, pointer_id=pointer_id, known=known)
    if within is not None:
        rows = _pick(asset, rows, view_id, start=within.start, stop=within.stop, step=within.step)
    with _deleted_meanwhile(pointer_id):
        array = arrays.open(arrays.asset_path(asset.dataset_id, asset.id))
    return ResolvedPointer(
        dataset_id=asset.dataset_id,
        asset_id=asset.id,
        asset_name=asset.name,
        array=array,
        rows=np.arange(rows.start, rows.stop, rows.step, dtype=np.int64),
        n_asset_rows=int(asset.n_rows),
        shape=(len(rows), *(int(d) for d in asset.shape[1:])),
        dtype=np.dtype(asset.dtype).name,
        bounds=_bounds(asset),
    )


@dataclass(frozen=True)
class _Found:
    """What a pointer id stood for: none of it changes while the dataset exists."""

    asset: AssetRow  # detached, read only
    rows: range
    view_id: str | None
    view_owner: str | None


# Pointers looked up lately, for `resolve_pointer(..., known=True)`; ids are uuid4, so
# one table serves every node in the process. A pointer found here is used only once
# its dataset is read back (deleting a dataset deletes its assets and views).
_FOUND: OrderedDict[str, _Found] = OrderedDict()
_FOUND_GUARD = threading.Lock()
_FOUND_KEPT = 256


def _lookup(
    session: Session, *, user: UserRow, pointer_id: str, known: bool = False
) -> tuple[AssetRow, range, str | None]:
    found = _remembered(session, pointer_id) if known else None
    if found is None:
        found = _find(session, pointer_id)
        if found is not None and known:
            with _FOUND_GUARD:
                _FOUND[pointer_id] = found
                while len(_FOUND) > _FOUND_KEPT:
                    _FOUND.popitem(last=False)
    if found is None or found.view_owner not in (None, user.id) and user.role != ROLE_ADMIN:
        # Another user's view answers exactly like an id that does not exist.
        raise NotFound(f"No asset or view {pointer_id!r} visible to you.", pointer=pointer_id)
    return found.asset, found.rows, found.view_id


@contextlib.contextmanager
def _deleted_meanwhile(pointer_id: str) -> Iterator[None]:
    """Open an asset's file found in the database: the admin's delete may commit and
    remove the files in between, and then the pointer is gone, as if it came first."""
    try:
        yield
    except FileNotFoundError:
        raise NotFound(
            f"No asset or view {pointer_id!r} visible to you.", pointer=pointer_id
        ) from None


def _remembered(session: Session, pointer_id: str) -> _Found | None:
    """What an earlier lookup found, if its dataset is still there (one light query per
    dataset and transaction: x and y of one dataset ask once)."""
    with _FOUND_GUARD:
        found = _FOUND.get(pointer_id)
        if found is not None:
            _FOUND.move_to_end(pointer_id)
    if found is None:
        return None
    if dataset_units_row(session, found.asset.dataset_id) is not None:
        return found
    with _FOUND_GUARD:
        _FOUND.pop(pointer_id, None)
    return None


_UNITS = select(DatasetRow.n_subjects, DatasetRow.subject_asset).where(
    DatasetRow.id == bindparam("b_id")
)  # built once: every step reads it


def dataset_units_row(session: Session, dataset_id: str) -> Row[tuple[int, str | None]] | None:
    """(n_subjects, subject_asset) of the dataset, None if it is gone: one light query
    per dataset and transaction (a step's x, y and units ask once)."""
    connection = session.connection()  # begins the transaction, if it had not
    seen_in, rows = session.info.get("dataset_units", (None, {}))
    if seen_in is not session.get_transaction():
        rows = {}
        session.info["dataset_units"] = (session.get_transaction(), rows)
    if dataset_id not in rows:
        rows[dataset_id] = connection.execute(_UNITS, {"b_id": dataset_id}).first()
    return rows[dataset_id]


def _find(session: Session, pointer_id: str) -> _Found | None:
    asset = session.get(AssetRow, pointer_id)
    if asset is not None:
        return _Found(asset, range(int(asset.n_rows)), None, None)
    view = session.get(AssetViewRow, pointer_id)
    if view is not None:
        asset = session.get(AssetRow, view.asset_id)
        if asset is not None:
            rows = range(int(view.start), int(view.stop), int(view.step))
            return _Found(asset, rows, view.id, view.owner_id)
    return None


def _pick(
    asset: AssetRow,
    rows: range,
    view_id: str | None,
    *,
    start: int | None,
    stop: int | None,
    step: int | None,
) -> range:
    """`rows[start:stop:step]` by Python's rules, as slicing a pointer takes them: a
    positive step, and at least one row (else `OutOfRange` naming the public length)."""
    if step is not None and step <= 0:
        raise ValidationError(
            f"A pointer slice needs a positive step. Received: step={step}", step=step
        )
    picked = rows[slice(start, stop, step)]
    if not picked:  # an empty pointer is always a mistake; say so with the public length
        given = [start, stop] if step is None else [start, stop, step]
        written = ":".join("" if v is None else str(v) for v in given)
        what = f"a view of {asset.name!r}" if view_id else repr(asset.name)
        raise OutOfRange(
            f"Slice [{written}] selects no rows of {what}, which has {len(rows)} rows.",
            rows=len(rows),
            start=start,
            stop=stop,
            step=step,
        )
    if len(picked) == 1:  # one row: any step says the same; keep it small
        picked = range(picked.start, picked.start + len(picked))
    return picked


def _mock_range(rows: range, mock_rows: int) -> range:
    return range(rows.start, max(rows.start, min(rows.stop, mock_rows)), rows.step)


def _bounds(asset: AssetRow) -> Bounds | None:
    return Bounds.from_json(asset.bounds)


def _info(asset: AssetRow, rows: range, view_id: str | None) -> PointerInfo:
    return PointerInfo(
        id=view_id or asset.id,
        dataset_id=asset.dataset_id,
        asset_id=asset.id,
        name=asset.name,
        dtype=np.dtype(asset.dtype).name,
        shape=(len(rows), *(int(d) for d in asset.shape[1:])),
        start=rows.start,
        stop=rows.stop,
        step=rows.step,
        is_view=view_id is not None,
        bounds=_bounds(asset),
        mock_source=asset.mock_source,
        mock_rows=len(_mock_range(rows, int(asset.mock_rows))),
    )
