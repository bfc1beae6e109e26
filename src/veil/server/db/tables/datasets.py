"""Datasets, their assets (one private .npy array each) and the views pointers slice out.

The arrays themselves live in the array store under ids taken from these rows; a row
appears only after its files are in place (see services.uploads.commit_upload).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from veil.server.db.base import Base, IdColumn, TimestampColumn

__all__ = ["AssetRow", "AssetViewRow", "DatasetRow"]

MOCK_FROM_OWNER = "owner"
MOCK_FROM_BOUNDS = "bounds"


class DatasetRow(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = IdColumn()
    name: Mapped[str] = mapped_column(String(100), unique=True, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    # The unit of privacy: a data subject when the owner named the asset holding each
    # row's subject id (that it exists is public, its values are not), else the row.
    # The number of subjects is public, like the number of rows.
    subject_asset: Mapped[str | None] = mapped_column(String(64), nullable=True)
    n_subjects: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = TimestampColumn()

    @property
    def unit(self) -> str:
        return "row" if self.subject_asset is None else "subject"


class AssetRow(Base):
    """One private array; `shape` and `dtype` are public, the values never are."""

    __tablename__ = "assets"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)

    id: Mapped[str] = IdColumn()
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True, nullable=False
    )
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    dtype: Mapped[str] = mapped_column(String(16), nullable=False)
    shape: Mapped[list[int]] = mapped_column(JSON, nullable=False)
    n_rows: Mapped[int] = mapped_column(BigInteger, nullable=False)
    nbytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    # [low, high], each a number or one per channel (services.bounds.Bounds.to_json)
    bounds: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    mock_source: Mapped[str] = mapped_column(String(16), nullable=False)
    mock_rows: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = TimestampColumn()


class AssetViewRow(Base):
    """Rows `range(start, stop, step)` of an asset, made by one user's slicing; no data copied."""

    __tablename__ = "asset_views"

    id: Mapped[str] = IdColumn()
    asset_id: Mapped[str] = mapped_column(
        ForeignKey("assets.id", ondelete="CASCADE"), index=True, nullable=False
    )
    owner_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False
    )
    start: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stop: Mapped[int] = mapped_column(BigInteger, nullable=False)
    step: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = TimestampColumn()
