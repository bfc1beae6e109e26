"""Accounts: the admin creates data scientists, sets budgets, disables accounts."""

from __future__ import annotations

import math
import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from veil._exceptions import Conflict, NotFound, ValidationError
from veil.server.db.tables.accounts import ROLE_ADMIN, ROLE_DS, UserRow
from veil.server.services import job_queue
from veil.server.services.auth import revoke_all
from veil.server.services.passwords import check_new_password, hash_password

__all__ = ["EMAIL_PATTERN", "create_user", "disable_user", "get_user", "list_users", "set_budget"]

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
_EMAIL = re.compile(EMAIL_PATTERN)


def _check_budget(budget: float) -> None:
    if not math.isfinite(budget) or budget < 0:
        raise ValidationError(
            f"budget must be a finite epsilon >= 0. Received: budget={budget!r}", field="budget"
        )


def create_user(
    session: Session, *, email: str, password: str, name: str, budget: float
) -> UserRow:
    email = email.strip().lower()
    if not _EMAIL.match(email):
        raise ValidationError(f"Expected an e-mail address. Received: {email!r}", field="email")
    check_new_password(password)
    _check_budget(budget)
    user = UserRow(
        email=email,
        name=name.strip() or email,
        role=ROLE_DS,
        password_hash=hash_password(password),
        budget=float(budget),
    )
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"A user with e-mail {email!r} exists already.", email=email) from None
    return user


def get_user(session: Session, *, user_id_or_email: str) -> UserRow:
    key = user_id_or_email.strip()
    user = (
        session.get(UserRow, key)
        or session.scalars(select(UserRow).where(UserRow.email == key.lower())).first()
    )
    if user is None:
        raise NotFound(f"No user {key!r}.", user=key)
    return user


def list_users(session: Session) -> list[UserRow]:
    return list(session.scalars(select(UserRow).order_by(UserRow.created_at)))


def set_budget(session: Session, *, user_id_or_email: str, budget: float) -> UserRow:
    _check_budget(budget)
    user = get_user(session, user_id_or_email=user_id_or_email)
    user.budget = float(budget)
    session.commit()
    return user


def disable_user(session: Session, *, user_id_or_email: str) -> UserRow:
    user = get_user(session, user_id_or_email=user_id_or_email)
    if user.role == ROLE_ADMIN:  # the node would be left without anyone to manage it
        raise Conflict(
            "The node's admin cannot be disabled; change its password instead.", user=user.email
        )
    user.disabled = True
    revoke_all(session, user_id=user.id)
    # Nobody may act for the account any more, its jobs included: a fit that went on
    # would keep charging its validation releases to a user who cannot read them.
    job_queue.stop_all_of(session, user.id)
    session.commit()
    return user
