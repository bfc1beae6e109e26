"""Dependencies the routes declare: the node context, a session, the caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from veil._exceptions import AuthenticationError, PermissionDenied
from veil.server.context import NodeContext
from veil.server.db.tables.accounts import ROLE_ADMIN, UserRow
from veil.server.services.auth import is_loopback, user_for_token

__all__ = [
    "AdminUser",
    "ContextDep",
    "CurrentUser",
    "ReadSessionDep",
    "SessionDep",
    "TokenDep",
]


# Dependencies that only read the request are `async`: FastAPI runs a plain `def` one on
# a worker thread, a hop (and, on a busy machine, a wait) per dependency per request.
async def get_context(request: Request) -> NodeContext:
    return request.app.state.node


ContextDep = Annotated[NodeContext, Depends(get_context)]


def get_session(request: Request, ctx: ContextDep) -> Iterator[Session]:
    """Reads get a plain session; anything else a write session.

    On SQLite a transaction that reads and then writes fails at once if another
    connection wrote in between (WAL snapshots cannot be upgraded), so requests that may
    write take the write lock at their first statement instead. Routes that compute
    (training, pricing, password hashing) take `ReadSessionDep` or open short sessions
    of their own, so that no write lock is held while they compute.
    """
    if request.method in ("GET", "HEAD"):
        with ctx.db.session() as session:
            yield session
    else:
        with ctx.db.write_session() as session:
            yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_read_session(ctx: ContextDep) -> Iterator[Session]:
    """A plain session for a POST that only reads (a quote): it never takes the lock."""
    with ctx.db.session() as session:
        yield session


ReadSessionDep = Annotated[Session, Depends(get_read_session)]

_bearer = HTTPBearer(auto_error=False, description="the token `POST /auth/login` returned")


async def get_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthenticationError(
            "Expected an 'Authorization: Bearer <token>' header; log in first."
        )
    return credentials.credentials.strip()


TokenDep = Annotated[str, Depends(get_token)]


def get_current_user(ctx: ContextDep, token: TokenDep) -> UserRow:
    # Its own short read session: the route's session has not begun, so even a POST
    # takes no write lock just to know who is asking.
    with ctx.db.session() as session:
        return user_for_token(session, token)


CurrentUser = Annotated[UserRow, Depends(get_current_user)]


def get_admin(user: CurrentUser) -> UserRow:
    if user.role != ROLE_ADMIN:
        raise PermissionDenied("Only the node's admin may do this.", role=user.role)
    return user


AdminUser = Annotated[UserRow, Depends(get_admin)]


_FORWARDING = ("forwarded", "x-forwarded-for")


def client_host(request: Request) -> str | None:
    return request.client.host if request.client else None


def from_local_machine(request: Request) -> bool:
    """From the node's own machine, and not relayed by a proxy (a relayed request's
    origin is unknown unless the proxy is trusted, and then it is not loopback)."""
    relayed = any(name in request.headers for name in _FORWARDING)
    return is_loopback(client_host(request)) and not relayed
