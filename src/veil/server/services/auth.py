"""Login, tokens and throttling.

Tokens are random, returned once, and stored as SHA-256 digests. An unknown e-mail and
a wrong password give the same error after the same argon2 work; repeated failures for
one e-mail or one address are throttled.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from veil._exceptions import AuthenticationError, PermissionDenied, RateLimited
from veil.server.db.base import as_utc
from veil.server.db.tables.accounts import TokenRow, UserRow
from veil.server.services.passwords import verify_dummy, verify_password

__all__ = [
    "Login",
    "LoginThrottle",
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


@dataclass
class LoginThrottle:
    """Counts recent failures per key (e-mail, address); locks a key out for a while."""

    allowed: int
    lockout_seconds: float
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                recent = [t for t in self._failures.get(key, []) if now - t < self.lockout_seconds]
                self._failures[key] = recent
                if len(recent) >= self.allowed:
                    wait = self.lockout_seconds - (now - recent[0])
                    raise RateLimited(
                        f"Too many failed logins; try again in {wait:.0f} s.",
                        retry_after=round(wait, 1),
                    )

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, []).append(now)

    def clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


@dataclass(frozen=True)
class Login:
    token: str
    expires_at: datetime
    user: UserRow


def login(
    session: Session,
    *,
    email: str,
    password: str,
    client_host: str | None,
    ttl_seconds: int,
    throttle: LoginThrottle,
) -> Login:
    email_key = f"email:{email.strip().lower()}"
    throttle.check(email_key, f"host:{client_host}")
    user = session.scalars(select(UserRow).where(UserRow.email == email.strip().lower())).first()
    if user is None:
        verify_dummy(password)
        ok = False
    else:
        ok = verify_password(user.password_hash, password)
    if not ok or user is None or user.disabled:
        throttle.fail(email_key, f"host:{client_host}")
        raise AuthenticationError(_BAD_LOGIN)
    if user.default_password and not is_loopback(client_host):
        raise PermissionDenied(
            "This account still has the default password, which is accepted only from the "
            "node's own machine. Log in on the node and change it with `veil admin passwd`.",
            client_host=client_host,
        )
    throttle.clear(email_key)
    token = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    session.add(TokenRow(user_id=user.id, token_hash=hash_token(token), expires_at=expires_at))
    session.commit()
    return Login(token=token, expires_at=expires_at, user=user)


def user_for_token(session: Session, token: str) -> UserRow:
    row = session.scalars(select(TokenRow).where(TokenRow.token_hash == hash_token(token))).first()
    now = datetime.now(UTC)
    if row is None:
        raise AuthenticationError("Unknown token; log in again.")
    if row.revoked_at is not None:
        raise AuthenticationError("This token was revoked (logged out); log in again.")
    if as_utc(row.expires_at) <= now:
        raise AuthenticationError("This token has expired; log in again.")
    user = session.get(UserRow, row.user_id)
    if user is None or user.disabled:
        raise AuthenticationError("This account is disabled.")
    return user


def logout(session: Session, *, token: str) -> None:
    session.execute(
        update(TokenRow)
        .where(TokenRow.token_hash == hash_token(token), TokenRow.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    session.commit()


def revoke_all(session: Session, *, user_id: str) -> None:
    session.execute(
        update(TokenRow)
        .where(TokenRow.user_id == user_id, TokenRow.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
