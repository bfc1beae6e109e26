"""Logging in and out of the dashboard (see `web.session` for how the session is kept)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from veil._exceptions import VeilError
from veil.server.api.deps import ContextDep, client_host, from_local_machine
from veil.server.services import auth
from veil.server.web.pages import TEMPLATES, PageRoute
from veil.server.web.session import FormUser, SameOrigin, end_session, session_token, start_session

router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _login_page(request: Request, *, email: str = "", error: str = "", status_code: int = 200):
    context = {"email": email, "error": error}
    return TEMPLATES.TemplateResponse(request, "login.html", context, status_code=status_code)


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return _login_page(request)


@router.post("/login", response_model=None)
def log_in(
    request: Request,
    ctx: ContextDep,
    _: SameOrigin,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
) -> HTMLResponse | RedirectResponse:
    try:
        login = auth.login(
            ctx.db,
            email=email,
            password=password,
            client_host=client_host(request),
            local=from_local_machine(request),
            ttl_seconds=ctx.settings.token_ttl_seconds,
            throttle=ctx.throttle,
        )
    except VeilError as exc:
        return _login_page(request, email=email, error=exc.message, status_code=exc.status_code)
    return start_session(request, login.token)


@router.post("/logout")
def log_out(request: Request, ctx: ContextDep, _: FormUser) -> RedirectResponse:
    auth.logout(ctx.db, token=session_token(request))
    return end_session()
