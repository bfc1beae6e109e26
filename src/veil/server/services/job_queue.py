"""The job queue, kept in the database: fair claims, leases, requeues, places in line.

Any process that runs jobs (a node's embedded threads, a `veil worker`) claims them here,
so every backend schedules alike:

- `claim_next` hands out the oldest queued job whose owner runs fewer jobs than the
  node's `max_running_jobs`, so one user's jobs never hold every worker.
- A claim is a lease: `attempt` grows by one (the claim's fencing token) and
  `lease_expires_at` is set `lease_seconds` ahead; the holder renews it (`renew`) while
  it runs the job, and every write the job makes checks the token first (`fenced_job`).
- `requeue_expired` puts a running job whose lease ran out back in the queue (its
  worker died or lost the database); it resumes from its last checkpoint wherever it is
  claimed next. A job whose worker was lost `max_starts` times fails instead.

Nothing here reads a private value: when a job runs, stops or resumes depends on
workers, leases and public counts only.

Lock order, shared with the rest of the node: node row (claims only), then job rows,
then model rows, then ledger rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import DateTime, bindparam, func, select, tuple_, update
from sqlalchemy.orm import Session

from veil.server.db.engine import Database
from veil.server.db.tables.accounts import NodeRow
from veil.server.db.tables.models import JobRow, ModelRow

__all__ = [
    "ACTIVE",
    "QUEUED",
    "RUNNING",
    "Claim",
    "LeaseLost",
    "claim_next",
    "fenced_job",
    "free_model",
    "has_waiting",
    "queue_position",
    "renew",
    "requeue_expired",
    "return_to_queue",
]

QUEUED = "queued"
RUNNING = "running"
ACTIVE = (QUEUED, RUNNING)


class LeaseLost(Exception):
    """This process no longer holds the job's lease: another worker may run it now, so
    this one stops without writing anything. Never shown to a user."""


@dataclass(frozen=True)
class Claim:
    """A job this process holds: its id and the claim's fencing token."""

    job_id: str
    attempt: int


def _now() -> datetime:
    return datetime.now(UTC)


# Statements built once: a worker claims after every job it ends.
_ANY_QUEUED = select(JobRow.id).where(JobRow.status == QUEUED).limit(1)
_NODE_LIMIT = select(NodeRow.max_running_jobs).where(NodeRow.id == 1).with_for_update()
_BUSY_OWNERS = (  # those running `b_limit` jobs already
    select(JobRow.owner_id)
    .where(JobRow.status == RUNNING)
    .group_by(JobRow.owner_id)
    .having(func.count() >= bindparam("b_limit"))
)
_NEXT = (  # the oldest queued job whose owner may run one more: its id and attempt
    select(JobRow.id, JobRow.attempt)
    .where(JobRow.status == QUEUED, JobRow.owner_id.not_in(_BUSY_OWNERS))
    .order_by(JobRow.created_at, JobRow.id)
    .limit(1)
)
_START = (  # only if it is still queued as read: a cancel may have come in between
    update(JobRow.__table__)
    .where(
        JobRow.id == bindparam("b_id"),
        JobRow.status == QUEUED,
        JobRow.attempt == bindparam("b_seen"),
    )
    .values(
        status=RUNNING,
        attempt=bindparam("b_attempt"),
        worker=bindparam("b_worker"),
        lease_expires_at=bindparam("b_lease"),
        # typed as the column (a bare parameter in a function would be stored untyped)
        started_at=func.coalesce(JobRow.started_at, bindparam("b_now", type_=DateTime(True))),
    )
)


def claim_next(db: Database, *, worker: str, lease_seconds: float) -> Claim | None:
    """Claim the next job this node's fairness rule allows, or None if none may run.

    An empty queue is seen by one light read, without the write lock: a worker asks
    after every job it ends, while its job's end is being answered. A job queued just
    after that read wakes the runner again (`JobRunner.submit`)."""
    with db.session() as session:
        if session.connection().execute(_ANY_QUEUED).first() is None:
            return None
    while True:
        with db.write_session() as session:
            connection = session.connection()
            # The node row serialises claims, so two workers cannot both start a job of
            # a user who may run one more (SQLite's write lock does this by itself).
            limit = connection.execute(_NODE_LIMIT).scalar_one()
            job = connection.execute(_NEXT, {"b_limit": limit}).first()
            if job is None:
                return None
            now, attempt = _now(), job.attempt + 1
            values = {
                "b_id": job.id,
                "b_seen": job.attempt,
                "b_attempt": attempt,
                "b_worker": worker,
                "b_lease": now + timedelta(seconds=lease_seconds),
                "b_now": now,
            }
            if connection.execute(_START, values).rowcount == 1:
                session.commit()
                return Claim(job_id=job.id, attempt=attempt)
            # cancelled since it was read (PostgreSQL): look again


def has_waiting(db: Database) -> bool:
    """Whether some queued job may start now."""
    with db.session() as session:
        node = session.get(NodeRow, 1)
        assert node is not None
        return session.execute(_NEXT, {"b_limit": node.max_running_jobs}).first() is not None


def renew(db: Database, claim: Claim, *, lease_seconds: float) -> bool:
    """Push the lease of a held job forward; False if this process lost it."""
    with db.write_session() as session:
        result = session.execute(
            update(JobRow)
            .where(
                JobRow.id == claim.job_id,
                JobRow.attempt == claim.attempt,
                JobRow.status == RUNNING,
            )
            .values(lease_expires_at=_now() + timedelta(seconds=lease_seconds))
        )
        session.commit()
        return result.rowcount == 1


def fenced_job(session: Session, claim: Claim) -> JobRow:
    """The held job, locked for this transaction; `LeaseLost` if the claim is stale."""
    job = session.get(JobRow, claim.job_id, with_for_update=True, populate_existing=True)
    if job is None or job.status != RUNNING or job.attempt != claim.attempt:
        raise LeaseLost(claim.job_id)
    return job


def stop(session: Session, job: JobRow) -> None:
    """Stop `job`: a queued one at once, a running one after its current step; nothing
    once it ended. The caller commits."""
    if job.status == QUEUED:
        job.status = "cancelled"
        job.cancel_requested = True
        job.finished_at = _now()
        free_model(session, job)
    elif job.status == RUNNING:
        job.cancel_requested = True


def stop_all_of(session: Session, owner_id: str) -> list[JobRow]:
    """Stop every queued or running job of one user (see `stop`); the caller commits.
    Returns them."""
    query = select(JobRow).where(JobRow.owner_id == owner_id, JobRow.status.in_((QUEUED, RUNNING)))
    jobs = list(session.scalars(query.with_for_update()))
    for job in jobs:
        stop(session, job)
    return jobs


def free_model(session: Session, job: JobRow, model: ModelRow | None = None) -> None:
    """The job is over: its model may train again (the caller holds the job row, and
    `model`, if given, is the job's model row already locked in this transaction)."""
    if model is None:
        model = session.get(ModelRow, job.model_id, with_for_update=True)
    if model is not None and model.busy_job_id == job.id:
        model.busy_job_id = None


def _requeue(job: JobRow) -> None:
    job.status = QUEUED
    job.worker = None
    job.lease_expires_at = None


def return_to_queue(db: Database, claim: Claim) -> None:
    """Give a held job back (this process is shutting down); it resumes elsewhere."""
    with db.write_session() as session:
        _requeue(fenced_job(session, claim))
        session.commit()


def requeue_expired(db: Database, *, max_starts: int) -> list[str]:
    """Requeue the running jobs whose lease expired; returns their ids.

    A job already started `max_starts` times fails instead: something about it (a model
    too large for a worker's memory, say) kills every worker that runs it.
    """
    with db.write_session() as session:
        expired = session.scalars(
            select(JobRow)
            .where(JobRow.status == RUNNING, JobRow.lease_expires_at < _now())
            .with_for_update()
        ).all()
        requeued = []
        for job in expired:
            if job.attempt >= max_starts:
                job.status = "failed"
                job.error = (
                    f"This job was started {job.attempt} times and its worker was lost "
                    "each time it ended; the model keeps its last checkpoint."
                )
                job.finished_at = _now()
                job.lease_expires_at = None
                free_model(session, job)
            else:
                _requeue(job)
                requeued.append(job.id)
        session.commit()
        return requeued


def queue_position(session: Session, job: JobRow) -> int:
    """1 + the queued jobs created before `job` (of every user)."""
    ahead = session.scalar(
        select(func.count())
        .select_from(JobRow)
        .where(
            JobRow.status == QUEUED,
            tuple_(JobRow.created_at, JobRow.id) < tuple_(job.created_at, job.id),
        )
    )
    return int(ahead or 0) + 1
