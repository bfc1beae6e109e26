"""Login, logout and password change."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from veil.server.api.deps import (
    ContextDep,
    CurrentUser,
    ReadSessionDep,
    TokenDep,
    client_host,
    from_local_machine,
)
from veil.server.api.errors import responses
from veil.server.api.schemas import Strict, UserOut, UtcDatetime
from veil.server.compute import preload_torch
from veil.server.db.tables.accounts import ROLE_DS
from veil.server.services import auth
from veil.server.services.node import get_node, login_warnings
from veil.server.services.passwords import MIN_PASSWORD_LENGTH

router = APIRouter(prefix="/auth", tags=["auth"])


class LoginIn(Strict):
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class LoginOut(BaseModel):
    token: str
    expires_at: UtcDatetime
    node_name: str
    user: UserOut
    warnings: list[str]


class PasswordIn(Strict):
    old_password: str = Field(max_length=1024)
    new_password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)


@router.post("/login", responses=responses(401, 403, 429))
def login(body: LoginIn, request: Request, ctx: ContextDep, session: ReadSessionDep) -> LoginOut:
    result = auth.login(
        ctx.db,
        email=body.email,
        password=body.password,
        client_host=client_host(request),
        local=from_local_machine(request),
        ttl_seconds=ctx.settings.token_ttl_seconds,
        throttle=ctx.throttle,
    )
    if result.user.role == ROLE_DS:
        preload_torch()  # a compile usually follows: its first optimizer needs torch._dynamo
    return LoginOut(
        token=result.token,
        expires_at=result.expires_at,
        node_name=get_node(session).name,
        user=UserOut.model_validate(result.user),
        warnings=login_warnings(session, user=result.user),
    )


@router.post("/logout", status_code=204)
def logout(ctx: ContextDep, token: TokenDep, _: CurrentUser) -> None:
    auth.logout(ctx.db, token=token)


@router.post("/password", status_code=204, responses=responses(429))
def change_password(
    body: PasswordIn, request: Request, ctx: ContextDep, token: TokenDep, user: CurrentUser
) -> None:
    auth.change_password(
        ctx.db,
        user=user,
        token=token,
        old_password=body.old_password,
        new_password=body.new_password,
        client_host=client_host(request),
        throttle=ctx.throttle,
    )
