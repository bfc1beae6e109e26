"""The release log: every release with who received it, filtered, newest first.

The admin reads everyone's releases; a data scientist only its own, and asking for
another account's is refused. A release's `params` are shown as stored: free-form
JSON describing the mechanism (its keys belong to the privacy core).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from veil._exceptions import PermissionDenied
from veil.server.db.base import as_utc
from veil.server.db.tables.accounts import ROLE_ADMIN, UserRow
from veil.server.db.tables.ledger import ReleaseRow

__all__ = ["ReleaseEntry", "ReleaseFilter", "find_releases", "release_kinds"]


@dataclass(frozen=True)
class ReleaseFilter:
    """Which releases to list; None matches all. `since` and `until` are whole UTC days."""

    user_id: str | None = None
    kind: str | None = None
    model_id: str | None = None
    since: date | None = None
    until: date | None = None


@dataclass(frozen=True)
class ReleaseEntry:
    id: str
    user_id: str
    email: str
    kind: str
    mechanism: str
    model_id: str | None
    object_id: str | None
    cost: float  # what the release added to the epsilon spent
    spent_after: float
    params: dict[str, Any]
    created_at: datetime


def _scope(viewer: UserRow, wanted: str | None) -> str | None:
    """The account whose releases `viewer` may list: anyone's for the admin, else its own."""
    if viewer.role == ROLE_ADMIN:
        return wanted
    if wanted not in (None, viewer.id):
        raise PermissionDenied("A data scientist sees only its own releases.", user_id=wanted)
    return viewer.id


def find_releases(
    session: Session, *, viewer: UserRow, filters: ReleaseFilter, limit: int = 500
) -> list[ReleaseEntry]:
    """The newest `limit` releases that match `filters` and that `viewer` may see."""
    query = select(ReleaseRow, UserRow.email).join(UserRow, UserRow.id == ReleaseRow.user_id)
    user_id = _scope(viewer, filters.user_id)
    if user_id is not None:
        query = query.where(ReleaseRow.user_id == user_id)
    if filters.kind is not None:
        query = query.where(ReleaseRow.kind == filters.kind)
    if filters.model_id is not None:
        query = query.where(ReleaseRow.model_id == filters.model_id)
    if filters.since is not None:
        query = query.where(ReleaseRow.created_at >= datetime.combine(filters.since, time(), UTC))
    if filters.until is not None and filters.until < date.max:  # date.max: no end
        end = datetime.combine(filters.until + timedelta(days=1), time(), UTC)
        query = query.where(ReleaseRow.created_at < end)
    query = query.order_by(ReleaseRow.created_at.desc(), ReleaseRow.id.desc()).limit(limit)
    return [
        ReleaseEntry(
            id=release.id,
            user_id=release.user_id,
            email=email,
            kind=release.kind,
            mechanism=release.mechanism,
            model_id=release.model_id,
            object_id=release.object_id,
            cost=release.epsilon_added,
            spent_after=release.epsilon_after,
            params=dict(release.params),
            created_at=as_utc(release.created_at),
        )
        for release, email in session.execute(query)
    ]


def release_kinds(session: Session, *, viewer: UserRow) -> list[str]:
    """The kinds of release `viewer` can filter on."""
    query = select(ReleaseRow.kind).distinct().order_by(ReleaseRow.kind)
    if viewer.role != ROLE_ADMIN:
        query = query.where(ReleaseRow.user_id == viewer.id)
    return list(session.scalars(query))
