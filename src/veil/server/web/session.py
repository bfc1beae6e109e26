"""Who is looking at the dashboard: an HttpOnly session cookie holding a login token.

Why a cookie rather than a bearer token kept in sessionStorage: the pages are rendered
on the node, so the node must know the viewer before any script runs; and a cookie
marked HttpOnly is out of reach of page scripts, so not even an injected script could
carry the token away. The cookie holds the same kind of token as the API's bearer
tokens (random, stored hashed, expiring, revoked at logout or when the account is
disabled), and:

- it is HttpOnly, SameSite=Strict, Secure when the page came over https, and ends
  with the browser session; only the dashboard's routes read it, the JSON API still
  takes bearer tokens only, so the cookie adds nothing a cross-site request could use
  against the API;
- every form that changes something carries a CSRF token derived from the session
  token, which a page of another site can neither read nor compute; the login form,
  which has no session yet, is refused when the browser says it came from elsewhere;
- the token never appears in a URL (the login form posts in the body, then only the
  cookie travels), so it reaches neither access logs nor the browser's history.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Form, Request
from fastapi.responses import RedirectResponse

from veil._exceptions import AuthenticationError, PermissionDenied
from veil.server.api.deps import SessionDep, require_admin
from veil.server.db.tables.accounts import UserRow
from veil.server.services.auth import user_for_token

__all__ = [
    "COOKIE",
    "FormAdmin",
    "FormUser",
    "PageAdmin",
    "PageUser",
    "SameOrigin",
    "end_session",
    "session_token",
    "start_session",
]

COOKIE = "veil_session"


def csrf_token(token: str) -> str:
    return hashlib.sha256(b"veil-dashboard-csrf:" + token.encode()).hexdigest()


def session_token(request: Request) -> str:
    token = request.cookies.get(COOKIE)
    if not token:
        raise AuthenticationError("Log in to see the dashboard.")
    return token


def get_page_user(request: Request, session: SessionDep) -> UserRow:
    token = session_token(request)
    user = user_for_token(session, token)
    session.commit()  # end the lookup's transaction, as the API's CurrentUser does
    request.state.csrf = csrf_token(token)  # for the forms the page will render
    return user


PageUser = Annotated[UserRow, Depends(get_page_user)]


def get_page_admin(user: PageUser) -> UserRow:
    return require_admin(user)


PageAdmin = Annotated[UserRow, Depends(get_page_admin)]


def check_origin(request: Request) -> None:
    """Refuse a form that the browser says was sent from another site."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise PermissionDenied(
            "A form sent from another site was refused. Expected: a form of this node.",
            origin=origin,
        )


SameOrigin = Annotated[None, Depends(check_origin)]


def get_form_user(
    request: Request, user: PageUser, _: SameOrigin, csrf: Annotated[str, Form()] = ""
) -> UserRow:
    """The viewer, for a form that changes something: the form must be one we rendered."""
    if not hmac.compare_digest(csrf.encode(), request.state.csrf.encode()):
        raise PermissionDenied("This form is out of date; reload the page and send it again.")
    return user


FormUser = Annotated[UserRow, Depends(get_form_user)]


def get_form_admin(user: FormUser) -> UserRow:
    return require_admin(user)


FormAdmin = Annotated[UserRow, Depends(get_form_admin)]


def start_session(request: Request, token: str) -> RedirectResponse:
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


def end_session() -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
