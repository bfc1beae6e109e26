"""Private objects: results a data scientist holds pointers to but cannot read (flow III).

An object is the raw per-row values of one result (a step's per-example losses, its
predictions) together with the rows of the data source they came from, and the bound
its release will apply. Only its kind and released shape are public.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from veil._exceptions import NotFound
from veil.privacy import Bound, bound_from_dict
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.models import ModelRow, PrivateObjectRow
from veil.server.storage.files import NodeFiles, atomic_write

__all__ = ["StoredObject", "load_object", "store_object"]


@dataclass(frozen=True)
class StoredObject:
    row: PrivateObjectRow
    values: np.ndarray
    rows: np.ndarray

    @property
    def bound(self) -> Bound | None:
        return None if self.row.bound is None else bound_from_dict(self.row.bound)


def store_object(
    session: Session,
    files: NodeFiles,
    *,
    user: UserRow,
    model: ModelRow,
    kind: str,
    source: str,
    rows: np.ndarray,
    values: np.ndarray,
    shape: tuple[int, ...],
    bound: Bound | None,
) -> PrivateObjectRow:
    """Keep `values` (one entry per row of `rows`) as a private object; the caller commits."""
    row = PrivateObjectRow(
        owner_id=user.id,
        model_id=model.id,
        kind=kind,
        shape=list(shape),
        source=source,
        bound=None if bound is None else bound.to_dict(),
        n_rows=int(len(rows)),
        path="",
    )
    session.add(row)
    session.flush()
    path = files.private_object(row.id)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, values=np.asarray(values), rows=np.asarray(rows, dtype=np.int64))

    atomic_write(path, write)
    row.path = path.relative_to(files.root).as_posix()
    return row


def load_object(
    session: Session, files: NodeFiles, *, user: UserRow, object_id: str
) -> StoredObject:
    """The caller's object with its values; another user's answers NotFound."""
    row = session.scalars(
        select(PrivateObjectRow).where(
            PrivateObjectRow.id == object_id, PrivateObjectRow.owner_id == user.id
        )
    ).first()
    if row is None:
        raise NotFound(f"No private object {object_id!r} among yours.", object_id=object_id)
    with np.load(files.root / row.path, allow_pickle=False) as stored:
        return StoredObject(row=row, values=stored["values"], rows=stored["rows"])
