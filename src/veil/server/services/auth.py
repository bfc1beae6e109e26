"""Login, tokens and password changes.

Tokens are random, returned once, and stored as SHA-256 digests. An unknown e-mail and
a wrong password give the same error after the same argon2 work; failures are throttled
per account (`services.throttle`). Password hashing runs with no transaction open: only
the token's insert, or the new hash's update, takes the write lock, briefly.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from veil._exceptions import AuthenticationError, PermissionDenied, ValidationError
from veil.server.db.base import as_utc
from veil.server.db.engine import Database
from veil.server.db.tables.accounts import TokenRow, UserRow
from veil.server.services.passwords import (
    check_new_password,
    hash_password,
    needs_rehash,
    verify_dummy,
    verify_password,
)
from veil.server.services.throttle import LoginThrottle

__all__ = [
    "Login",
    "change_password",
    "hash_token",
    "is_loopback",
    "login",
    "logout",
    "revoke_all",
    "user_for_token",
]

_BAD_LOGIN = "Unknown e-mail or wrong password."


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Login:
    token: str
    expires_at: datetime
    user: UserRow


def login(
    db: Database,
    *,
    email: str,
    password: str,
    client_host: str | None,
    local: bool,
    ttl_seconds: int,
    throttle: LoginThrottle,
) -> Login:
    """A new token for the right password. `local`: the request came from the node's
    own machine (the only place the default admin password is accepted)."""
    email = email.strip().lower()
    throttle.check(email, client_host)
    user = None
    if "\x00" not in email:  # no account's email holds one, and PostgreSQL refuses it
        with db.session() as session:
            user = session.scalars(select(UserRow).where(UserRow.email == email)).first()
    if user is None:
        verify_dummy(password)
        ok = False
    else:
        ok = verify_password(user.password_hash, password)
    if not ok or user is None or user.disabled:
        throttle.fail(email, client_host)
        raise AuthenticationError(_BAD_LOGIN)
    if user.default_password and not local:
        raise PermissionDenied(
            "This account still has the default password, which is accepted only from the "
            "node's own machine. Log in on the node and change it with `veil admin passwd`.",
            client_host=client_host,
        )
    throttle.succeed(email, client_host)
    token = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    rehashed = hash_password(password) if needs_rehash(user.password_hash) else None
    with db.write_session() as session:
        session.add(TokenRow(user_id=user.id, token_hash=hash_token(token), expires_at=expires_at))
        if rehashed is not None:  # only if the password is still the one just verified
            session.execute(
                update(UserRow)
                .where(UserRow.id == user.id, UserRow.password_hash == user.password_hash)
                .values(password_hash=rehashed)
            )
        session.commit()
    return Login(token=token, expires_at=expires_at, user=user)


def change_password(
    db: Database,
    *,
    user: UserRow,
    token: str,
    old_password: str,
    new_password: str,
    client_host: str | None,
    throttle: LoginThrottle,
) -> None:
    """Check the current password (throttled like a login), set the new one, and
    revoke every other session of the account: whoever else held one must log in anew."""
    throttle.check(user.email, client_host)
    if not verify_password(user.password_hash, old_password):
        throttle.fail(user.email, client_host)
        raise AuthenticationError("The current password is wrong.")
    check_new_password(new_password)
    if new_password == old_password:
        raise ValidationError("The new password must differ from the current one.")
    new_hash = hash_password(new_password)
    with db.write_session() as session:
        row = session.get(UserRow, user.id)
        assert row is not None
        row.password_hash = new_hash
        row.default_password = False
        revoke_all(session, user_id=user.id, keep=hash_token(token))
        session.commit()
    throttle.succeed(user.email, client_host)


# Every request runs this; built once, it is looked up in SQLAlchemy's cache for free.
_TOKEN_USER = (
    select(UserRow, TokenRow.revoked_at, TokenRow.expires_at)
    .join(TokenRow, TokenRow.user_id == UserRow.id)
    .where(TokenRow.token_hash == bindparam("b_hash"))
)


def user_for_token(session: Session, token: str) -> UserRow:
    found = session.execute(_TOKEN_USER, {"b_hash": hash_token(token)}).first()
    now = datetime.now(UTC)
    if found is None:
        raise AuthenticationError("Unknown token; log in again.")
    user, revoked_at, expires_at = found
    if revoked_at is not None:
        raise AuthenticationError("This token was revoked (logged out); log in again.")
    if as_utc(expires_at) <= now:
        raise AuthenticationError("This token has expired; log in again.")
    if user.disabled:
        raise AuthenticationError("This account is disabled.")
    return user


def logout(db: Database, *, token: str) -> None:
    with db.write_session() as session:
        session.execute(
            update(TokenRow)
            .where(TokenRow.token_hash == hash_token(token), TokenRow.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        session.commit()


def revoke_all(session: Session, *, user_id: str, keep: str | None = None) -> None:
    """Revoke the user's tokens, but the one whose hash is `keep`; the caller commits."""
    query = update(TokenRow).where(TokenRow.user_id == user_id, TokenRow.revoked_at.is_(None))
    if keep is not None:
        query = query.where(TokenRow.token_hash != keep)
    session.execute(query.values(revoked_at=datetime.now(UTC)))
