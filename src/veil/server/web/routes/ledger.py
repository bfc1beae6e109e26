"""The ledger: every release (who, what, which model, epsilon, noise, when), filtered, and
each account's epsilon spent over time."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from veil._exceptions import ValidationError
from veil.server.api.deps import SessionDep
from veil.server.db.tables.accounts import ROLE_ADMIN
from veil.server.services import release_log, users
from veil.server.services.release_log import ReleaseEntry, ReleaseFilter
from veil.server.web.pages import PageRoute, render
from veil.server.web.session import PageUser

router = APIRouter(route_class=PageRoute, include_in_schema=False)

Text = Annotated[str, Query(max_length=64)]


def _day(name: str, text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        raise ValidationError(
            f"{name} expects a day as YYYY-MM-DD. Received: {text!r}", field=name
        ) from None


def _series(entries: list[ReleaseEntry], now: datetime) -> list[dict[str, Any]]:
    """Per account, its epsilon spent after each release: from 0 at its first, until now."""
    points: dict[str, list[dict[str, float]]] = {}
    for entry in sorted(entries, key=lambda e: e.created_at):
        at = entry.created_at.timestamp() * 1000  # what JavaScript's Date takes
        line = points.setdefault(entry.email, [{"x": at, "y": 0.0}])
        line.append({"x": at, "y": entry.spent_after})
    for line in points.values():
        line.append({"x": now.timestamp() * 1000, "y": line[-1]["y"]})
    return [{"label": email, "points": line} for email, line in points.items()]


@router.get("/ledger")
def ledger_page(
    request: Request,
    session: SessionDep,
    viewer: PageUser,
    user: Text = "",
    kind: Text = "",
    model: Text = "",
    since: Text = "",
    until: Text = "",
) -> HTMLResponse:
    filters = ReleaseFilter(
        user_id=user or None,
        kind=kind or None,
        model_id=model or None,
        since=_day("since", since),
        until=_day("until", until),
    )
    entries = release_log.find_releases(session, viewer=viewer, filters=filters)
    return render(
        request,
        "ledger.html",
        viewer=viewer,
        session=session,
        filters=filters,
        entries=entries,
        series=_series(entries, datetime.now(UTC)),
        kinds=release_log.release_kinds(session, viewer=viewer),
        accounts=users.list_users(session) if viewer.role == ROLE_ADMIN else [],
    )
