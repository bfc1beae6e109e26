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
from veil.server.db.base import new_id
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.models import ModelRow, PrivateObjectRow
from veil.server.storage.files import NodeFiles, atomic_write

__all__ = ["PendingObject", "StoredObject", "load_object", "stage_object"]


@dataclass(frozen=True)
class StoredObject:
    row: PrivateObjectRow
    values: np.ndarray
    rows: np.ndarray
    groups: np.ndarray | None  # each row's data subject, where the unit is the subject

    @property
    def bound(self) -> Bound | None:
        return None if self.row.bound is None else bound_from_dict(self.row.bound)


@dataclass(frozen=True)
class PendingObject:
    """An object's file, written before the transaction that records it (`record`)."""

    id: str
    kind: str
    shape: tuple[int, ...]
    source: str
    bound: Bound | None
    n_rows: int
    path: Path

    def record(
        self, session: Session, files: NodeFiles, *, user: UserRow, model: ModelRow
    ) -> PrivateObjectRow:
        """Insert the object's row; the caller commits (or `discard`s on failure)."""
        row = PrivateObjectRow(
            id=self.id,
            owner_id=user.id,
            model_id=model.id,
            kind=self.kind,
            shape=list(self.shape),
            source=self.source,
            bound=None if self.bound is None else self.bound.to_dict(),
            n_rows=self.n_rows,
            path=self.path.relative_to(files.root).as_posix(),
        )
        session.add(row)
        return row

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def stage_object(
    files: NodeFiles,
    *,
    kind: str,
    source: str,
    rows: np.ndarray,
    values: np.ndarray,
    shape: tuple[int, ...],
    bound: Bound | None,
    groups: np.ndarray | None = None,
    sync: bool = True,
) -> PendingObject:
    """Write `values` (one entry per row of `rows`, of data subjects `groups` where the
    source's unit is the subject) as a private object's file. With `sync=False` the
    caller syncs `path` (`sync_files`) before recording the object."""
    object_id = new_id()
    path = files.private_object(object_id)
    arrays = {"values": np.asarray(values), "rows": np.asarray(rows, dtype=np.int64)}
    if groups is not None:
        arrays["groups"] = np.asarray(groups, dtype=np.int64)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write, sync=sync)
    return PendingObject(
        id=object_id,
        kind=kind,
        shape=shape,
        source=source,
        bound=bound,
        n_rows=int(len(rows)),
        path=path,
    )


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
        groups = stored["groups"] if "groups" in stored.files else None
        return StoredObject(row=row, values=stored["values"], rows=stored["rows"], groups=groups)
