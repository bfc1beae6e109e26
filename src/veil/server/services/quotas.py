"""Per-user quotas: what one user may hold on the node, so no user can fill its disk,
its database or its queue for the others.

The admin sets each limit on the node row (`admin.update_node(...)`); a new node takes
them from `Settings`. What each bounds, and why it is counted so:

- `max_active_jobs`: jobs queued or running. The fair queue runs `max_running_jobs`
  of a user's jobs at a time, and the rest wait in the table; this bounds the wait.
- `max_models`: models, each a checkpoint (weights, optimizer state, cart) of up to
  `max_params` parameters. Deleting a model frees its slot and everything it held.
- `max_drafts`: drafts (flow I) not compiled yet. A compiled draft belongs to its
  model (deleted with it), so it counts under `max_models` instead.
- `max_objects` and `max_object_bytes`: private objects (a step's loss and
  predictions; two per step, each a blob in the database) by count and by stored bytes.
  Both, because neither bounds the other: a count alone lets large-output steps (up to
  64 MiB of predictions each) fill a disk, and bytes alone let tiny objects fill the
  table with rows. The bytes are the length of each object's blob, which its public
  shapes and dtypes fix (safetensors writes a header of those and the raw values), so
  neither count depends on a private value.

Every check runs in the transaction that creates the thing, so two requests cannot
both take the last slot: objects in one conditional UPDATE of the user's running
totals (`user_usage`, moved in the transactions that record and delete objects), the
others by counting the user's rows after locking that same row (on SQLite the write
session's lock already serialises them). Lock order, after the rest of the node's
(`job_queue`): the usage row comes last. A refusal is `QuotaExceeded`, with the limit,
the user's own current count and what to do; nothing of the request is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import bindparam, case, func, select, update
from sqlalchemy.orm import Session

from veil._exceptions import QuotaExceeded
from veil.server.db.tables.accounts import NodeRow, UsageRow
from veil.server.db.tables.models import DraftRow, JobRow, ModelRow
from veil.server.db.user_rows import lock_user_row
from veil.server.services.job_queue import ACTIVE
from veil.server.services.node import get_node

__all__ = [
    "ACTIVE_JOBS",
    "DRAFTS",
    "MODELS",
    "Quota",
    "QuotaUse",
    "claim",
    "claim_objects",
    "free_objects",
    "lock_usage",
    "usage",
]


@dataclass(frozen=True)
class Quota:
    """A limit on how many rows of one kind a user holds."""

    limit: str  # the node's column, e.g. "max_models"
    things: str  # what is counted, in the message: "models"
    count: Callable[[Session, str], int]
    to_free: str  # what the user can do, in the message
    not_done: str  # what the refusal left undone


def _count(session: Session, query: object) -> int:
    return int(session.scalar(query) or 0)  # type: ignore[call-overload]


MODELS = Quota(
    limit="max_models",
    things="models",
    count=lambda s, user_id: _count(
        s, select(func.count()).select_from(ModelRow).where(ModelRow.owner_id == user_id)
    ),
    to_free="Delete one you no longer need with model_ptr.delete() (publish its weights "
    "first if you want them)",
    not_done="Nothing was created.",
)
DRAFTS = Quota(
    limit="max_drafts",
    things="uncompiled drafts",
    count=lambda s, user_id: _count(
        s,
        select(func.count())
        .select_from(DraftRow)
        .where(DraftRow.owner_id == user_id, DraftRow.compiled_model_id.is_(None)),
    ),
    to_free="Compile the ones you want and discard the rest with client.models.discard_drafts()",
    not_done="Nothing was created.",
)
ACTIVE_JOBS = Quota(
    limit="max_active_jobs",
    things="jobs queued or running",
    count=lambda s, user_id: _count(
        s,
        select(func.count())
        .select_from(JobRow)
        .where(JobRow.owner_id == user_id, JobRow.status.in_(ACTIVE)),
    ),
    to_free="Wait for one to end (model_ptr.wait()) or cancel one (model_ptr.cancel())",
    not_done="Nothing was queued.",
)

_OBJECTS, _OBJECT_BYTES = "private objects", "bytes of private objects"
_OBJECTS_TO_FREE = (
    "Delete the ones you are done with: ptr.delete() for one, model_ptr.delete_objects() "
    "for all of a model's (publish first what you want to keep), or model_ptr.delete()"
)


@dataclass(frozen=True)
class QuotaUse:
    """How much of one quota a user holds: `used` of `limit` `things`."""

    quota: str  # the node's limit, e.g. "max_models"
    things: str
    used: int
    limit: int


def usage(session: Session, user_id: str) -> list[QuotaUse]:
    """Everything the user holds against each of the node's limits on one user (the
    user's own counts: nothing here depends on another user or a private value)."""
    node = get_node(session)
    row = session.get(UsageRow, user_id)
    objects, nbytes = (row.objects, row.object_bytes) if row is not None else (0, 0)
    held = [(q.limit, q.things, q.count(session, user_id)) for q in (MODELS, DRAFTS, ACTIVE_JOBS)]
    held += [
        ("max_objects", _OBJECTS, objects),
        ("max_object_bytes", _OBJECT_BYTES, nbytes),
    ]
    return [QuotaUse(name, things, used, getattr(node, name)) for name, things, used in held]


def _refusal(
    *, limit: str, allowed: int, things: str, current: int, requested: int, to_free: str
) -> QuotaExceeded:
    return QuotaExceeded(
        f"You hold {current:,} {things}; this node allows one user {limit}={allowed:,}, "
        f"and this request needs {requested:,} more. {to_free}, or ask the node's admin "
        f"to raise {limit}.",
        quota=limit,
        limit=allowed,
        current=current,
        requested=requested,
    )


def lock_usage(session: Session, user_id: str) -> UsageRow:
    """The user's usage row, locked until the transaction ends; created if missing (on
    PostgreSQL the row lock serialises the user's quota checks)."""
    return lock_user_row(session, UsageRow, user_id, objects=0, object_bytes=0)


def claim(session: Session, quota: Quota, *, user_id: str) -> None:
    """Refuse, with `QuotaExceeded`, if the user holds `quota`'s limit already; call in
    the write transaction that creates one more, before creating it."""
    lock_usage(session, user_id)
    current = quota.count(session, user_id)
    allowed = getattr(get_node(session), quota.limit)
    if current + 1 > allowed:
        raise _refusal(
            limit=quota.limit,
            allowed=allowed,
            things=quota.things,
            current=current,
            requested=1,
            to_free=f"{quota.to_free}. {quota.not_done}",
        )


_NODE_LIMIT = select(NodeRow.max_objects).where(NodeRow.id == 1).scalar_subquery()
_NODE_BYTES = select(NodeRow.max_object_bytes).where(NodeRow.id == 1).scalar_subquery()
_TAKE = (
    update(UsageRow.__table__)
    .where(
        UsageRow.user_id == bindparam("b_user"),
        UsageRow.objects + bindparam("b_count") <= _NODE_LIMIT,
        UsageRow.object_bytes + bindparam("b_bytes") <= _NODE_BYTES,
    )
    .values(
        objects=UsageRow.objects + bindparam("b_count"),
        object_bytes=UsageRow.object_bytes + bindparam("b_bytes"),
    )
)  # built once: every step runs it


def claim_objects(session: Session, *, user_id: str, count: int, nbytes: int) -> None:
    """Add `count` objects of `nbytes` to the user's totals, or refuse with
    `QuotaExceeded` if either would pass the node's limit; in the recording transaction.

    One statement when the user has room (a step runs it), the row's own lock making
    it atomic; the rest only when it had none, or no row yet.
    """
    params = {"b_user": user_id, "b_count": count, "b_bytes": nbytes}
    if session.connection().execute(_TAKE, params).rowcount == 1:
        return
    usage = lock_usage(session, user_id)
    node = get_node(session)
    done = "Nothing was trained or kept."
    if usage.objects + count > node.max_objects:
        raise _refusal(
            limit="max_objects",
            allowed=node.max_objects,
            things=_OBJECTS,
            current=usage.objects,
            requested=count,
            to_free=f"{_OBJECTS_TO_FREE}. {done}",
        )
    if usage.object_bytes + nbytes > node.max_object_bytes:
        raise _refusal(
            limit="max_object_bytes",
            allowed=node.max_object_bytes,
            things=_OBJECT_BYTES,
            current=usage.object_bytes,
            requested=nbytes,
            to_free=f"{_OBJECTS_TO_FREE}. {done}",
        )
    usage.objects += count
    usage.object_bytes += nbytes
    session.flush()


def free_objects(session: Session, *, user_id: str, count: int, nbytes: int) -> None:
    """Take deleted objects off the user's totals (never below zero); call in the
    deleting transaction, after `lock_usage`."""
    session.execute(
        update(UsageRow)
        .where(UsageRow.user_id == user_id)
        .values(
            objects=case((UsageRow.objects > count, UsageRow.objects - count), else_=0),
            object_bytes=case(
                (UsageRow.object_bytes > nbytes, UsageRow.object_bytes - nbytes), else_=0
            ),
        )
        .execution_options(synchronize_session=False)
    )
