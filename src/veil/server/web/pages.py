"""How dashboard pages answer: templates, one-time notices, errors as pages, safe headers.

Every page route uses `PageRoute`: a request that is not logged in (or whose session
ended) goes to the login page, any other typed error becomes an HTML page with its
status code, and every answer carries a strict Content-Security-Policy (scripts and
styles from the node only, no framing).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from veil._exceptions import AuthenticationError, VeilError
from veil.server.api.errors import validation_error
from veil.server.db.tables.accounts import ROLE_ADMIN, UserRow
from veil.server.services.budgets import BudgetBar
from veil.server.services.node import get_node, login_warnings
from veil.server.web.session import COOKIE

__all__ = ["Notice", "PageRoute", "act", "render"]

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
NOTICE_COOKIE = "veil_notice"
_NOTICE_CHARS = 600  # a cookie holds about 4 kB
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Notice:
    """What the last form did, shown once on the page it leads back to."""

    ok: bool
    text: str

    def encode(self) -> str:
        data = json.dumps([self.ok, self.text[:_NOTICE_CHARS]]).encode()
        return base64.urlsafe_b64encode(data).decode()

    @classmethod
    def read(cls, request: Request) -> Notice | None:
        value = request.cookies.get(NOTICE_COOKIE)
        if not value:
            return None
        try:
            ok, text = json.loads(base64.urlsafe_b64decode(value))
        except (binascii.Error, ValueError, TypeError, RecursionError):  # not ours: ignore it
            return None
        return cls(ok=bool(ok), text=str(text))


def act(url: str, action: Callable[[], str]) -> RedirectResponse:
    """Run a form's action, then go back to `url` with what it did (or why it could not)."""
    try:
        notice = Notice(ok=True, text=action())
    except VeilError as exc:
        notice = Notice(ok=False, text=str(exc))
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(NOTICE_COOKIE, notice.encode(), httponly=True, samesite="strict")
    return response


def render(
    request: Request,
    template: str,
    *,
    viewer: UserRow,
    session: Session,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page for a logged-in viewer: the layout's nav, its notice and warnings, the page."""
    notice = Notice.read(request)
    response = TEMPLATES.TemplateResponse(
        request,
        template,
        {
            "viewer": viewer,
            "is_admin": viewer.role == ROLE_ADMIN,
            "node": get_node(session),
            "csrf": request.state.csrf,
            "notice": notice,
            "warnings": login_warnings(session, user=viewer),
            **context,
        },
        status_code=status_code,
    )
    if notice is not None:
        response.delete_cookie(NOTICE_COOKIE)
    return response


def error_page(request: Request, status_code: int, message: str) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request,
        "error.html",
        {"status_code": status_code, "message": message},
        status_code=status_code,
    )


class PageRoute(APIRoute):
    """A dashboard route: errors become pages, a missing session the login page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_page(request: Request) -> Response:
            try:
                response = await handle(request)
            except AuthenticationError:
                response = RedirectResponse("/login", status_code=303)
                response.delete_cookie(COOKIE, path="/")
            except RequestValidationError as exc:
                response = error_page(request, 422, validation_error(exc).message)
            except VeilError as exc:
                response = error_page(request, exc.status_code, exc.message)
            response.headers.update(HEADERS)
            return response

        return handle_page


def _epsilon(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _when(moment: datetime | None) -> str:
    return "–" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _value(value: Any) -> str:
    """A release parameter of any JSON type, short enough for a table cell."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _segments(bar: BudgetBar) -> dict[str, float]:
    """Percentages of the bar's width for spent, cart and left (a full bar = the budget)."""
    whole = max(bar.budget, bar.spent + bar.cart)
    if whole <= 0:
        return {"spent": 0.0, "cart": 0.0, "left": 0.0}
    spent = 100 * bar.spent / whole
    cart = 100 * bar.cart / whole
    return {"spent": spent, "cart": cart, "left": max(0.0, 100 - spent - cart)}


def _short(identifier: str | None) -> str:
    return "" if identifier is None else identifier[:8]


TEMPLATES.env.filters.update(epsilon=_epsilon, when=_when, value=_value, short=_short)
TEMPLATES.env.globals["segments"] = _segments
