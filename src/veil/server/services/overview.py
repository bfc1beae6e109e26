"""The node at a glance, for its admin: datasets, accounts, jobs, releases, epsilon."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from veil.server.db.tables.accounts import ROLE_DS, UserRow
from veil.server.db.tables.datasets import AssetRow, DatasetRow
from veil.server.db.tables.ledger import ReleaseRow
from veil.server.db.tables.models import JobRow
from veil.server.services.ledger import ledger_overview

__all__ = ["NodeOverview", "node_overview"]


@dataclass(frozen=True)
class NodeOverview:
    datasets: int
    assets: int
    data_scientists: int
    disabled: int
    jobs_running: int
    jobs_queued: int
    releases: int
    epsilon_spent: float  # summed over accounts, each at the node's delta
    epsilon_budgeted: float


def _count(session: Session, *where: object, of: type = UserRow) -> int:
    return session.scalar(select(func.count()).select_from(of).where(*where)) or 0


def node_overview(session: Session, *, delta: float) -> NodeOverview:
    entries = ledger_overview(session, delta=delta)
    return NodeOverview(
        datasets=_count(session, of=DatasetRow),
        assets=_count(session, of=AssetRow),
        data_scientists=_count(session, UserRow.role == ROLE_DS),
        disabled=_count(session, UserRow.disabled),
        jobs_running=_count(session, JobRow.status == "running", of=JobRow),
        jobs_queued=_count(session, JobRow.status == "queued", of=JobRow),
        releases=_count(session, of=ReleaseRow),
        epsilon_spent=sum(e.spent for e in entries),
        epsilon_budgeted=sum(e.budget for e in entries),
    )
