"""Rows kept one per user (its ledger, its quota usage), locked for a transaction."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

__all__ = ["lock_user_row"]

Row = TypeVar("Row")


def lock_user_row(session: Session, row_type: type[Row], user_id: str, **initial: Any) -> Row:
    """The user's row of `row_type` (keyed by `user_id`), locked until the transaction
    ends; created with `initial` if missing.

    On SQLite the immediate write transaction already holds the database's write lock
    (FOR UPDATE renders as nothing there); on PostgreSQL the row lock serialises the
    user's writes. Two first writers racing to create the row both run the INSERT ...
    ON CONFLICT DO NOTHING, and then both wait for the one row.
    """
    key = row_type.user_id  # type: ignore[attr-defined]
    query = (
        select(row_type)
        .where(key == user_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    row = session.scalars(query).first()
    if row is not None:
        return row
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert(row_type)
        .values(user_id=user_id, **initial)
        .on_conflict_do_nothing(index_elements=["user_id"])
    )
    return session.scalars(query).one()
