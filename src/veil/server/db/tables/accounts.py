"""Node identity, user accounts and login tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from veil.server.db.base import Base, IdColumn, TimestampColumn

__all__ = ["NodeRow", "TokenRow", "UsageRow", "UserRow"]

ROLE_ADMIN = "admin"
ROLE_DS = "data_scientist"


class NodeRow(Base):
    """The single row describing this node (id is always 1) and the limits its admin
    sets: model size, fit length, and what one user may hold (`services.quotas`)."""

    __tablename__ = "node"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80), nullable=False)
    delta: Mapped[float] = mapped_column(Float, nullable=False)
    max_params: Mapped[int] = mapped_column(Integer, nullable=False)
    max_flops: Mapped[int] = mapped_column(Integer, nullable=False)
    max_fit_steps: Mapped[int] = mapped_column(Integer, nullable=False)
    max_running_jobs: Mapped[int] = mapped_column(Integer, nullable=False)
    max_active_jobs: Mapped[int] = mapped_column(Integer, nullable=False)
    max_models: Mapped[int] = mapped_column(Integer, nullable=False)
    max_drafts: Mapped[int] = mapped_column(Integer, nullable=False)
    max_objects: Mapped[int] = mapped_column(Integer, nullable=False)
    max_object_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = TimestampColumn()


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = IdColumn()
    email: Mapped[str] = mapped_column(String(320), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    role: Mapped[str] = mapped_column(String(20), nullable=False)
    password_hash: Mapped[str] = mapped_column(String(200), nullable=False)
    budget: Mapped[float] = mapped_column(Float, nullable=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    default_password: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    created_at: Mapped[datetime] = TimestampColumn()


class TokenRow(Base):
    """A login token; only its SHA-256 is stored."""

    __tablename__ = "tokens"

    id: Mapped[str] = IdColumn()
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = TimestampColumn()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UsageRow(Base):
    """What one user's private objects hold: how many, and their stored bytes.

    Kept as running totals, moved in the transaction that records or deletes objects
    (`services.quotas`), so a step checks its user's quota in one statement, whatever
    the user holds. Both follow from public shapes alone. The row is also the lock
    that serialises the user's other quota checks (models, drafts, jobs).
    """

    __tablename__ = "user_usage"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    objects: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    object_bytes: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
