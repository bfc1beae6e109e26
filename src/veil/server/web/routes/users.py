"""Accounts (the admin's page): create, set a budget, disable; each budget as a bar."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from veil.server.api.deps import SessionDep
from veil.server.services import users
from veil.server.services.budgets import budget_bars
from veil.server.services.node import get_node
from veil.server.web.pages import PageRoute, act, render
from veil.server.web.session import FormAdmin, PageAdmin

router = APIRouter(prefix="/users", route_class=PageRoute, include_in_schema=False)


@router.get("")
def users_page(request: Request, session: SessionDep, viewer: PageAdmin) -> HTMLResponse:
    bars = budget_bars(session, delta=get_node(session).delta)
    return render(request, "users.html", viewer=viewer, session=session, bars=bars)


@router.post("")
def create_user(
    session: SessionDep,
    _: FormAdmin,
    email: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=1024)],
    budget: Annotated[float, Form()],
    name: Annotated[str, Form(max_length=200)] = "",
) -> RedirectResponse:
    def create() -> str:
        user = users.create_user(session, email=email, password=password, name=name, budget=budget)
        return f"Created {user.email} with a budget of epsilon {user.budget:g}."

    return act("/users", create)


@router.post("/{user_id}/budget")
def set_budget(
    user_id: str, session: SessionDep, _: FormAdmin, budget: Annotated[float, Form()]
) -> RedirectResponse:
    def update() -> str:
        user = users.set_budget(session, user_id_or_email=user_id, budget=budget)
        return f"{user.email} now has a budget of epsilon {user.budget:g}."

    return act("/users", update)


@router.post("/{user_id}/disable")
def disable_user(user_id: str, session: SessionDep, _: FormAdmin) -> RedirectResponse:
    def disable() -> str:
        user = users.disable_user(session, user_id_or_email=user_id)
        return f"Disabled {user.email}; its sessions are revoked."

    return act("/users", disable)
