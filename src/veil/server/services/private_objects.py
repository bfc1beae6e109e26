"""Private objects: results a data scientist holds pointers to but cannot read (flow III).

An object is the raw per-row values of one result (a step's per-example losses, its
predictions) together with the rows of the data source they came from, and the bound
its release will apply. Only its kind and released shape are public. Its arrays are
stored on its row (a safetensors blob), in the transaction of the step that made it;
objects made before that lived in a file (`path`), still read. Each counts against its
owner's quotas (`services.quotas`) from the transaction that records it to the one that
deletes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as load_bytes
from safetensors.numpy import save as save_bytes
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from veil._exceptions import NotFound
from veil.privacy import Bound, bound_from_dict
from veil.server.db.base import new_id, utcnow
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.models import PrivateObjectRow
from veil.server.services import quotas
from veil.server.storage.files import NodeFiles

__all__ = [
    "PendingObject",
    "StoredObject",
    "delete_model_objects",
    "delete_object",
    "load_object",
    "pending_object",
    "record_objects",
]


@dataclass(frozen=True)
class StoredObject:
    row: PrivateObjectRow
    values: np.ndarray
    rows: np.ndarray
    groups: np.ndarray | None  # each row's data subject, where the unit is the subject

    @property
    def bound(self) -> Bound | None:
        return None if self.row.bound is None else bound_from_dict(self.row.bound)


_INSERT = insert(PrivateObjectRow.__table__)  # built once: a step records two per call


@dataclass(frozen=True)
class PendingObject:
    """An object encoded, before the transaction that records it (`record_objects`)."""

    kind: str
    shape: tuple[int, ...]
    source: str
    bound: Bound | None
    n_rows: int
    data: bytes

    def row(self, *, owner_id: str, model_id: str) -> PrivateObjectRow:
        return PrivateObjectRow(
            id=new_id(),
            owner_id=owner_id,
            model_id=model_id,
            kind=self.kind,
            shape=list(self.shape),
            source=self.source,
            bound=None if self.bound is None else self.bound.to_dict(),
            n_rows=self.n_rows,
            path=None,
            data=self.data,
            created_at=utcnow(),
        )


def record_objects(
    session: Session, objects: list[PendingObject], *, owner_id: str, model_id: str
) -> list[PrivateObjectRow]:
    """Insert the objects' rows (one statement, no ORM flush) if the owner's quotas
    have room for them, else raise `QuotaExceeded`; the caller commits. Returns the
    rows as inserted."""
    nbytes = sum(len(o.data) for o in objects)
    quotas.claim_objects(session, user_id=owner_id, count=len(objects), nbytes=nbytes)
    rows = [o.row(owner_id=owner_id, model_id=model_id) for o in objects]
    columns = [c.key for c in _INSERT.table.columns]
    session.connection().execute(_INSERT, [{c: getattr(r, c) for c in columns} for r in rows])
    return rows


def pending_object(
    *,
    kind: str,
    source: str,
    rows: np.ndarray,
    values: np.ndarray,
    shape: tuple[int, ...],
    bound: Bound | None,
    groups: np.ndarray | None = None,
) -> PendingObject:
    """`values` (one entry per row of `rows`, of data subjects `groups` where the
    source's unit is the subject) as a private object, to `record_objects`."""
    arrays = {
        "values": np.ascontiguousarray(values),
        "rows": np.ascontiguousarray(rows, dtype=np.int64),
    }
    if groups is not None:
        arrays["groups"] = np.ascontiguousarray(groups, dtype=np.int64)
    return PendingObject(
        kind=kind,
        shape=shape,
        source=source,
        bound=bound,
        n_rows=int(len(rows)),
        data=save_bytes(arrays),
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
    if row.data is not None:
        stored = load_bytes(row.data)
    else:
        assert row.path is not None
        with np.load(files.root / row.path, allow_pickle=False) as npz:
            stored = {name: npz[name] for name in npz.files}
    return StoredObject(
        row=row, values=stored["values"], rows=stored["rows"], groups=stored.get("groups")
    )


def _delete_where(session: Session, *, owner_id: str, where: list) -> int:
    """Delete the owner's objects matching `where` and take them off its quotas; the
    caller commits. Returns how many went."""
    quotas.lock_usage(session, owner_id)
    mine = [PrivateObjectRow.owner_id == owner_id, *where]
    count, nbytes = session.execute(
        select(func.count(), func.coalesce(func.sum(func.length(PrivateObjectRow.data)), 0))
        .select_from(PrivateObjectRow)
        .where(*mine)
    ).one()
    if count:
        session.execute(delete(PrivateObjectRow).where(*mine))
        quotas.free_objects(session, user_id=owner_id, count=count, nbytes=nbytes)
    return int(count)


def delete_object(session: Session, *, user: UserRow, object_id: str) -> None:
    """Delete one of the caller's objects, freeing its quota; another's is NotFound.
    Its releases stay in the ledger."""
    if not _delete_where(session, owner_id=user.id, where=[PrivateObjectRow.id == object_id]):
        raise NotFound(f"No private object {object_id!r} among yours.", object_id=object_id)
    session.commit()


def delete_model_objects(session: Session, *, owner_id: str, model_id: str) -> int:
    """Delete every object of the owner's model, freeing their quota; the caller checks
    the model is the owner's, and commits. Returns how many went."""
    return _delete_where(session, owner_id=owner_id, where=[PrivateObjectRow.model_id == model_id])
