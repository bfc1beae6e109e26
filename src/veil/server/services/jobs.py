"""Training jobs across models: what runs, what waits, what ended; cancelling one by id.

The admin sees and may cancel every job; a data scientist only its own (another user's
job answers as if it did not exist). Only public facts are shown: counts, status, the
DP parameters and the model's cart (what publishing it now would add to its owner's
epsilon spent), never a value computed from private data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, case, select
from sqlalchemy.orm import Session

from veil._exceptions import NotFound
from veil.server.db.base import as_utc
from veil.server.db.tables.accounts import ROLE_ADMIN, UserRow
from veil.server.db.tables.models import JobRow, ModelRow
from veil.server.services import ledger
from veil.server.services.fits import cancel
from veil.server.services.job_queue import ACTIVE
from veil.server.services.models import cart_epsilon

__all__ = ["JobView", "cancel_job", "list_jobs"]


@dataclass(frozen=True)
class JobView:
    id: str
    model_id: str
    owner_email: str
    status: str
    epoch: int
    max_iter: int
    step: int
    steps: int
    batch_size: int | None
    sigma: float | None
    cart: float
    cancel_requested: bool
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _visible(query: Select, viewer: UserRow) -> Select:
    return query if viewer.role == ROLE_ADMIN else query.where(JobRow.owner_id == viewer.id)


def list_jobs(
    session: Session, *, viewer: UserRow, delta: float, finished: int = 20
) -> list[JobView]:
    """Running and queued jobs (oldest first), then the latest `finished` others."""
    base = (
        select(JobRow, ModelRow, UserRow.email)
        .join(ModelRow, ModelRow.id == JobRow.model_id)
        .join(UserRow, UserRow.id == JobRow.owner_id)
    )
    running_first = case((JobRow.status == "running", 0), else_=1)
    active = _visible(base, viewer).where(JobRow.status.in_(ACTIVE))
    ended = _visible(base, viewer).where(JobRow.status.not_in(ACTIVE))
    rows = [
        *session.execute(active.order_by(running_first, JobRow.created_at)),
        *session.execute(ended.order_by(JobRow.created_at.desc()).limit(finished)),
    ]
    spent = {
        owner: ledger.spent_curve(session, user_id=owner)
        for owner in {j.owner_id for j, _, _ in rows}
    }
    return [
        JobView(
            id=job.id,
            model_id=job.model_id,
            owner_email=email,
            status=job.status,
            epoch=job.epoch,
            max_iter=job.max_iter,
            step=job.step,
            steps=job.steps,
            batch_size=job.params.get("batch_size"),
            sigma=job.params.get("sigma"),
            cart=cart_epsilon(spent[job.owner_id], model, delta=delta),
            cancel_requested=job.cancel_requested,
            error=job.error,
            created_at=as_utc(job.created_at),
            finished_at=as_utc(job.finished_at) if job.finished_at else None,
        )
        for job, model, email in rows
    ]


def cancel_job(session: Session, *, viewer: UserRow, job_id: str) -> JobRow:
    """Stop a queued job at once, a running one after its current step; a no-op once
    it ended."""
    job = session.get(JobRow, job_id)
    if job is None or (viewer.role != ROLE_ADMIN and job.owner_id != viewer.id):
        raise NotFound(f"No training job {job_id!r} visible to you.", job_id=job_id)
    cancel(session, job)
    return job
