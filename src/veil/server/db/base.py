"""Declarative base and column helpers shared by every table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import DateTime, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "IdColumn", "TimestampColumn", "as_utc", "new_id", "utcnow"]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes even for timezone=True columns; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def IdColumn() -> Mapped[str]:  # noqa: N802 - reads like a column type
    return mapped_column(String(36), primary_key=True, default=new_id)


def TimestampColumn() -> Mapped[datetime]:  # noqa: N802
    return mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
