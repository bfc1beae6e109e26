"""The privacy ledger: per-user spent curve, and every release that charged it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from veil.server.db.base import Base, IdColumn, TimestampColumn

__all__ = ["LedgerRow", "ReleaseRow"]


class LedgerRow(Base):
    """One row per user: the RDP curve of everything released to it, and its epsilon.

    Releases lock this row (SELECT ... FOR UPDATE on PostgreSQL, an immediate write
    transaction on SQLite), so concurrent releases of one user are serialised.
    """

    __tablename__ = "ledgers"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    curve: Mapped[list[float]] = mapped_column(JSON, nullable=False)
    epsilon: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    updated_at: Mapped[datetime] = TimestampColumn()


class ReleaseRow(Base):
    __tablename__ = "releases"

    id: Mapped[str] = IdColumn()
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True, nullable=False)
    model_id: Mapped[str | None] = mapped_column(String(36), index=True, nullable=True)
    object_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    mechanism: Mapped[str] = mapped_column(String(40), nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    curve_added: Mapped[list[float]] = mapped_column(JSON, nullable=False)
    epsilon_added: Mapped[float] = mapped_column(Float, nullable=False)
    epsilon_after: Mapped[float] = mapped_column(Float, nullable=False)
    result_path: Mapped[str | None] = mapped_column(String(500), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = TimestampColumn()
