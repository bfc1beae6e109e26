"""Dependencies the routes declare: the node context, a session, the caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from veil._exceptions import AuthenticationError, PermissionDenied
from veil.server.context import NodeContext
from veil.server.db.tables.accounts import ROLE_ADMIN, UserRow
from veil.server.services.auth import user_for_token

__all__ = ["AdminUser", "ContextDep", "CurrentUser", "Publisher", "SessionDep", "TokenDep"]


def get_context(request: Request) -> NodeContext:
    return request.app.state.node


ContextDep = Annotated[NodeContext, Depends(get_context)]


def get_session(request: Request, ctx: ContextDep) -> Iterator[Session]:
    """Reads get a plain session; anything else a write session.

    On SQLite a transaction that reads and then writes fails at once if another
    connection wrote in between (WAL snapshots cannot be upgraded), so requests that may
    write take the write lock at their first statement instead.
    """
    if request.method in ("GET", "HEAD"):
        with ctx.db.session() as session:
            yield session
    else:
        with ctx.db.write_session() as session:
            yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_token(authorization: Annotated[str | None, Header()] = None) -> str:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise AuthenticationError(
            "Expected an 'Authorization: Bearer <token>' header; log in first."
        )
    return authorization.split(" ", 1)[1].strip()


TokenDep = Annotated[str, Depends(get_token)]


def get_current_user(session: SessionDep, token: TokenDep) -> UserRow:
    user = user_for_token(session, token)
    session.commit()  # end the lookup's transaction: routes may open write sessions of their own
    return user


CurrentUser = Annotated[UserRow, Depends(get_current_user)]


def get_admin(user: CurrentUser) -> UserRow:
    if user.role != ROLE_ADMIN:
        raise PermissionDenied("Only the node's admin may do this.", role=user.role)
    return user


AdminUser = Annotated[UserRow, Depends(get_admin)]


def get_publisher(session: SessionDep, user: CurrentUser) -> UserRow:
    """The caller, with the request's read session closed: a release opens its own write
    transaction, and requests holding two connections each could drain the pool when
    many publish at once."""
    session.close()
    return user


Publisher = Annotated[UserRow, Depends(get_publisher)]
