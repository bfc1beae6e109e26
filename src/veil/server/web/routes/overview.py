"""The first page: the node at a glance for the admin, one's own budget for anyone else."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from veil.server.api.deps import SessionDep
from veil.server.db.tables.accounts import ROLE_ADMIN
from veil.server.services.budgets import budget_bars
from veil.server.services.jobs import list_jobs
from veil.server.services.node import get_node
from veil.server.services.overview import node_overview
from veil.server.services.release_log import ReleaseFilter, find_releases
from veil.server.web.pages import PageRoute, render
from veil.server.web.session import PageUser

router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.get("/")
def overview(request: Request, session: SessionDep, viewer: PageUser) -> HTMLResponse:
    delta = get_node(session).delta
    admin = viewer.role == ROLE_ADMIN
    return render(
        request,
        "overview.html",
        viewer=viewer,
        session=session,
        overview=node_overview(session, delta=delta) if admin else None,
        bars=budget_bars(session, delta=delta, user_id=None if admin else viewer.id),
        jobs=[j for j in list_jobs(session, viewer=viewer, delta=delta) if j.active],
        releases=find_releases(session, viewer=viewer, filters=ReleaseFilter(), limit=5),
    )
