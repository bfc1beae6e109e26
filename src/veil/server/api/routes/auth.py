"""Login, logout and password change."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from veil.server.api.deps import ContextDep, CurrentUser, SessionDep, TokenDep
from veil.server.api.schemas import Strict, UserOut
from veil.server.services import auth, users
from veil.server.services.node import get_node, login_warnings

router = APIRouter(prefix="/auth", tags=["auth"])


class LoginIn(Strict):
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class LoginOut(BaseModel):
    token: str
    expires_at: datetime
    node_name: str
    user: UserOut
    warnings: list[str]


class PasswordIn(Strict):
    old_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


@router.post("/login")
def login(body: LoginIn, request: Request, ctx: ContextDep, session: SessionDep) -> LoginOut:
    result = auth.login(
        session,
        email=body.email,
        password=body.password,
        client_host=request.client.host if request.client else None,
        ttl_seconds=ctx.settings.token_ttl_seconds,
        throttle=ctx.throttle,
    )
    return LoginOut(
        token=result.token,
        expires_at=result.expires_at,
        node_name=get_node(session).name,
        user=UserOut.model_validate(result.user),
        warnings=login_warnings(session, user=result.user),
    )


@router.post("/logout", status_code=204)
def logout(session: SessionDep, token: TokenDep, _: CurrentUser) -> None:
    auth.logout(session, token=token)


@router.post("/password", status_code=204)
def change_password(body: PasswordIn, session: SessionDep, user: CurrentUser) -> None:
    users.change_password(
        session, user=user, old_password=body.old_password, new_password=body.new_password
    )
