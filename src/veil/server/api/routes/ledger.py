"""The privacy ledger: a user's own budget, and every user's for the admin."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from pydantic import BaseModel

from veil.server.api.deps import AdminUser, CurrentUser, SessionDep
from veil.server.api.errors import responses
from veil.server.api.routes.releases import ReleaseOut
from veil.server.services import ledger, releases, users
from veil.server.services.node import get_node

__all__ = ["router"]

router = APIRouter(tags=["ledger"])


class BudgetOut(BaseModel):
    total: float
    spent: float
    remaining: float
    delta: float


class LedgerEntryOut(BaseModel):
    user_id: str
    email: str
    name: str
    role: str
    budget: float
    spent: float
    remaining: float
    releases: int
    delta: float


@router.get("/budget")
def read_budget(session: SessionDep, user: CurrentUser) -> BudgetOut:
    found = ledger.budget(session, user=user, delta=get_node(session).delta)
    return BudgetOut(
        total=found.total, spent=found.spent, remaining=found.remaining, delta=found.delta
    )


@router.get("/ledger", responses=responses(403))
def read_ledger(session: SessionDep, _: AdminUser) -> list[LedgerEntryOut]:
    delta = get_node(session).delta
    return [
        LedgerEntryOut(**asdict(entry), delta=delta)
        for entry in ledger.ledger_overview(session, delta=delta)
    ]


@router.get("/ledger/{user}/releases", responses=responses(403, 404))
def user_releases(user: str, session: SessionDep, _: AdminUser) -> list[ReleaseOut]:
    target = users.get_user(session, user_id_or_email=user)
    return [ReleaseOut.of(r) for r in releases.list_releases(session, user=target)]
