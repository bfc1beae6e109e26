"""Models, their drafts (flow I), training jobs, per-epoch progress, private results."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from veil.server.db.base import Base, IdColumn, TimestampColumn

__all__ = [
    "CartChangeRow",
    "DraftRow",
    "JobEpochRow",
    "JobRow",
    "ModelRow",
    "ModelStateRow",
    "PrivateObjectRow",
]


class DraftRow(Base):
    """A model being assembled layer by layer on the node (flow I)."""

    __tablename__ = "model_drafts"

    id: Mapped[str] = IdColumn()
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True, nullable=False)
    layers: Mapped[list[Any]] = mapped_column(JSON, nullable=False)
    compiled_model_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = TimestampColumn()


class ModelRow(Base):
    """A compiled model. Its weights live in the array store; its cart lives here.

    `cart_curve` is the cart's current RDP curve and `charged_curve` what releases of
    this model have charged so far: publishing charges their difference, read in O(1).
    `version` counts checkpoints; the weights file of a version and the cart stored
    with it are written together, so a publish never pairs new weights with an old cart.
    A version a flow III step made lives in `model_states` instead of files.
    """

    __tablename__ = "models"

    id: Mapped[str] = IdColumn()
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True, nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    version: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    cart_state: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    cart_curve: Mapped[list[float]] = mapped_column(JSON, nullable=False)
    charged_curve: Mapped[list[float]] = mapped_column(JSON, nullable=False)
    steps: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    busy_job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = TimestampColumn()
    updated_at: Mapped[datetime] = TimestampColumn()


class ModelStateRow(Base):
    """One checkpoint of a model kept in the database: what a flow III step writes.

    `data` is one safetensors blob (weights, optimizer and generator state, the cart's
    per-row arrays; `services.checkpoints`). Written in the step's own transaction, so
    the model's version, its cart and its weights can only move together.
    """

    __tablename__ = "model_states"

    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class CartChangeRow(Base):
    """The cart of a version a flow III step made, as the rows it changed (`full` is
    False) or whole (`full`); `services.cart_changes` says how a version's cart is read
    back from the newest full row before it. Written in the step's own transaction."""

    __tablename__ = "cart_changes"

    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    full: Mapped[bool] = mapped_column(Boolean, nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class JobRow(Base):
    """A training job and its lease.

    A worker runs a job only while it holds the lease: `attempt` is the fencing token of
    its claim (every claim adds one), `lease_expires_at` what its heartbeat keeps in the
    future. A running job whose lease expired is requeued (`jobs.leases`) and resumes
    from the model's checkpoint, which holds `checkpoint_step` of this job's steps.
    """

    __tablename__ = "jobs"

    id: Mapped[str] = IdColumn()
    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), index=True, nullable=False
    )
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True, nullable=False)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    status: Mapped[str] = mapped_column(String(20), index=True, nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    epoch: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    max_iter: Mapped[int] = mapped_column(Integer, nullable=False)
    step: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    steps: Mapped[int] = mapped_column(Integer, nullable=False)
    # step x the expected batch size: public. The exact Poisson count never is. It
    # passes 2^31 in long fits of large batches, so it needs PostgreSQL's BIGINT.
    expected_samples: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    checkpoint_step: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = TimestampColumn()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobEpochRow(Base):
    """Progress of one finished epoch; `metrics` holds only released (noised) values."""

    __tablename__ = "job_epochs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True, nullable=False
    )
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    expected_samples: Mapped[int] = mapped_column(BigInteger, nullable=False)
    elapsed: Mapped[float] = mapped_column(Float, nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = TimestampColumn()


class PrivateObjectRow(Base):
    """A private result on the node (a step's loss or predictions).

    `data` (or, for objects made before it existed, the file at `path`) holds the raw
    per-row values and the rows of data source `source` they came from; they leave the
    node only through a release, which bounds them with `bound`
    (`veil.privacy.bound_from_dict`; None when the model's output has no natural bound,
    so the publish must name one) and charges those rows in the model's cart.
    """

    __tablename__ = "private_objects"

    id: Mapped[str] = IdColumn()
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True, nullable=False)
    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), index=True, nullable=False
    )
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    shape: Mapped[list[int]] = mapped_column(JSON, nullable=False)
    source: Mapped[str] = mapped_column(String(36), nullable=False)
    bound: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    n_rows: Mapped[int] = mapped_column(Integer, nullable=False)
    path: Mapped[str | None] = mapped_column(String(500), nullable=True)
    data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = TimestampColumn()
