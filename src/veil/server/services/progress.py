"""What `progress()` shows of a model's latest job: public counts and released metrics.

Steps, epochs, the *expected* number of rows sampled (never the exact Poisson batch
sizes), the job's place in the queue and how often it was resumed after losing its
worker: all public, none depends on a private value. Metrics are released (noised,
charged) values only.

`progress_after` waits for the job to move before answering (a long poll): the caller
sees the end of a fit when it happens, not at its next poll. It answers at the moments
a job writes what `progress` shows (every `PROGRESS_EVERY_S` of training, each
checkpoint, the end), which anyone polling sees too, so it tells nothing more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from veil.server.db.base import as_utc
from veil.server.db.engine import Database
from veil.server.db.tables.accounts import NodeRow, UserRow
from veil.server.db.tables.models import JobEpochRow, ModelRow
from veil.server.jobs.signals import FALLBACK_POLL_S, JobSignals
from veil.server.services import job_queue, ledger
from veil.server.services.fits import latest_job
from veil.server.services.models import cart_epsilon, not_yours

__all__ = ["MAX_WAIT_S", "Progress", "expected_samples", "progress", "progress_after"]

MAX_WAIT_S = 10.0  # a long poll's longest wait: a node that stops waits this long at most
_ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Progress:
    model_id: str
    status: str  # idle, queued, running, done, failed, cancelled
    spent: float  # the user's epsilon spent
    cart: float  # what publishing the model now would add to it
    total_steps: int  # every step the model's weights have taken
    job_id: str | None = None
    epoch: int | None = None
    max_iter: int | None = None
    step: int | None = None
    steps: int | None = None
    expected_samples: int | None = None  # rows, or subjects where that is the unit
    unit: str | None = None  # what the fit samples: "row" or "subject"
    elapsed: float | None = None
    sigma: float | None = None
    error: str | None = None
    queue_position: int | None = None  # 1 = next in line; None unless queued
    restarts: int = 0  # times the job resumed from its checkpoint after losing its worker
    metrics: list[dict[str, Any]] = field(default_factory=list)


# Built once: every poll runs them. Only the columns a progress shows (a model row's
# spec and cart state are JSON that a poll has no use for).
_MODEL = select(
    ModelRow.owner_id, ModelRow.steps, ModelRow.cart_curve, ModelRow.charged_curve
).where(ModelRow.id == bindparam("b_id"))
_DELTA = select(NodeRow.delta).where(NodeRow.id == 1)
_EPOCHS = (
    select(JobEpochRow.epoch, JobEpochRow.metrics)
    .where(JobEpochRow.job_id == bindparam("b_job"))
    .order_by(JobEpochRow.epoch)
)


def progress(session: Session, *, user: UserRow, model_id: str) -> Progress:
    """Status of the model's latest job; only released (noised, charged) metrics."""
    connection = session.connection()
    model = connection.execute(_MODEL, {"b_id": model_id}).first()
    if model is None or model.owner_id != user.id:
        raise not_yours(model_id)
    delta = connection.execute(_DELTA).scalar_one()
    job = latest_job(session, model_id=model_id)
    spent = ledger.spent_curve(session, user_id=user.id)
    spent_epsilon = spent.epsilon(delta)
    common = {
        "model_id": model_id,
        "spent": spent_epsilon,
        "cart": cart_epsilon(spent, model, delta=delta, spent_epsilon=spent_epsilon),
        "total_steps": model.steps,
    }
    if job is None:
        return Progress(status="idle", **common)
    # Epoch rows are written with the job's epoch count: none before its first epoch.
    epochs = connection.execute(_EPOCHS, {"b_job": job.id}).all() if job.epoch else []
    start = job.started_at
    end = job.finished_at or datetime.now(UTC)
    elapsed = (as_utc(end) - as_utc(start)).total_seconds() if start else 0.0
    queued = job.status == job_queue.QUEUED
    return Progress(
        **common,
        job_id=job.id,
        status=job.status,
        epoch=job.epoch,
        max_iter=job.max_iter,
        step=job.step,
        steps=job.steps,
        expected_samples=job.expected_samples,
        unit=job.params.get("unit", "row"),
        elapsed=round(elapsed, 3),
        sigma=job.params.get("sigma"),
        error=job.error,
        queue_position=job_queue.queue_position(session, job) if queued else None,
        restarts=max(0, job.attempt - 1),
        metrics=[{"epoch": e.epoch, **e.metrics} for e in epochs],
    )


async def progress_after(
    db: Database, signals: JobSignals, *, user: UserRow, model_id: str, wait: float
) -> Progress:
    """`progress` once the job moves (status, epoch, step, metrics or place in the queue
    change), or after `wait` seconds; at once if no job is queued or running."""

    def read() -> Progress:
        with db.session() as session:
            return progress(session, user=user, model_id=model_id)

    deadline = time.monotonic() + wait
    seen = signals.count(model_id)
    first = await run_in_threadpool(read)  # NotFound here: another's model is never waited on
    now = first
    while now.status in _ACTIVE and not _moved(first, now):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await signals.changed(model_id, since=seen, timeout=min(left, FALLBACK_POLL_S))
        seen = signals.count(model_id)
        now = await run_in_threadpool(read)
    return now


def _moved(before: Progress, after: Progress) -> bool:
    def key(p: Progress) -> tuple:
        return (p.job_id, p.status, p.epoch, p.step, p.queue_position, len(p.metrics))

    return key(before) != key(after)


def expected_samples(params: dict[str, Any], step: int) -> int:
    """Units (rows or subjects) a fit's first `step` steps sample on average
    (step x q x n_train): public. The exact count depends on which ones Poisson sampling
    drew, and is never shown."""
    return round(step * params["q"] * params["n_train"])
