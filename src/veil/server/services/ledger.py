"""The privacy ledger: what each user has spent, and the one way to spend more.

Every release goes through `charge()`, inside a `Database.write_session()`: it locks
the user's ledger row, adds the release's RDP curve, refuses if the epsilon of the sum
(at the node's delta) would pass the user's budget, records the release and leaves the
commit to the caller, so the release, its charge and whatever else the caller changes
(a model's charged curve) become visible together or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from veil._exceptions import BudgetExceeded, Conflict
from veil.privacy import RdpCurve
from veil.server.db.base import new_id, utcnow
from veil.server.db.tables.accounts import NodeRow, UserRow
from veil.server.db.tables.ledger import LedgerRow, ReleaseRow
from veil.server.db.user_rows import lock_user_row

__all__ = [
    "Budget",
    "LedgerEntry",
    "added_epsilon",
    "budget",
    "charge",
    "exceeds",
    "ledger_overview",
    "spent_curve",
]

# Float noise allowed when comparing the epsilon after a release with the budget: the
# same curves summed in another order may differ in the last bits.
_RTOL = 1e-9


@dataclass(frozen=True)
class Budget:
    """A user's privacy budget at the node's delta: epsilon total, spent, remaining."""

    total: float
    spent: float
    remaining: float
    delta: float


@dataclass(frozen=True)
class LedgerEntry:
    """One line of the admin's ledger."""

    user_id: str
    email: str
    name: str
    role: str
    budget: float
    spent: float
    remaining: float
    releases: int


def exceeds(spent: float, budget: float) -> bool:
    """Whether an epsilon spent passes a budget, beyond float noise."""
    return spent > budget * (1 + _RTOL) + _RTOL


def _spent(curve: list[float] | None, delta: float) -> float:
    return 0.0 if curve is None else RdpCurve.from_list(curve).epsilon(delta)


def budget(session: Session, *, user: UserRow, delta: float) -> Budget:
    """The budget of `user`, its epsilon spent so far at `delta`, and what is left."""
    spent = spent_curve(session, user_id=user.id).epsilon(delta)
    return Budget(
        total=user.budget, spent=spent, remaining=max(0.0, user.budget - spent), delta=delta
    )


def spent_curve(session: Session, *, user_id: str) -> RdpCurve:
    """The RDP curve of everything released to the user so far."""
    stored = session.scalar(select(LedgerRow.curve).where(LedgerRow.user_id == user_id))
    return RdpCurve.zero() if stored is None else RdpCurve.from_list(stored)


def added_epsilon(
    spent: RdpCurve, curve: RdpCurve, *, delta: float, spent_epsilon: float | None = None
) -> float:
    """How much the epsilon spent would grow if `curve` were charged on top of `spent`
    (`spent_epsilon`: `spent.epsilon(delta)`, where the caller has it already)."""
    before = spent.epsilon(delta) if spent_epsilon is None else spent_epsilon
    return (spent + curve).epsilon(delta) - before


def ledger_overview(session: Session, *, delta: float) -> list[LedgerEntry]:
    """Every account with its budget, epsilon spent at `delta`, and release count."""
    curves = {row.user_id: row.curve for row in session.scalars(select(LedgerRow))}
    counts: dict[str, int] = dict(
        session.execute(select(ReleaseRow.user_id, func.count()).group_by(ReleaseRow.user_id)).all()
    )
    entries = []
    for user in session.scalars(select(UserRow).order_by(UserRow.created_at, UserRow.email)):
        spent = _spent(curves.get(user.id), delta)
        entries.append(
            LedgerEntry(
                user_id=user.id,
                email=user.email,
                name=user.name,
                role=user.role,
                budget=user.budget,
                spent=spent,
                remaining=max(0.0, user.budget - spent),
                releases=counts.get(user.id, 0),
            )
        )
    return entries


_NODE_DELTA = select(NodeRow.delta).where(NodeRow.id == 1).with_for_update(read=True)


def _lock_ledger(session: Session, user_id: str) -> LedgerRow:
    """The user's ledger row, locked until the transaction ends; created if missing."""
    return lock_user_row(
        session,
        LedgerRow,
        user_id,
        curve=RdpCurve.zero().to_list(),
        epsilon=0.0,
        updated_at=utcnow(),
    )


def _check_write_session(session: Session) -> None:
    connection = session.connection()
    immediate = connection.get_execution_options().get("sqlite_begin") == "IMMEDIATE"
    if connection.dialect.name == "sqlite" and not immediate:
        # A deferred SQLite transaction would let two releases read the same balance.
        raise RuntimeError("ledger.charge() must run inside Database.write_session()")
    if session.info.get("durable") is False:
        # A release must be on disk before it answers: a lost charge would refund it.
        raise RuntimeError("ledger.charge() must run in a durable write session")


def charge(
    session: Session,
    *,
    user: UserRow,
    curve_added: RdpCurve,
    delta: float,
    kind: str,
    mechanism: str,
    params: Mapping[str, Any],
    model_id: str | None = None,
    object_id: str | None = None,
    result_path: str | None = None,
    result: Mapping[str, Any] | None = None,
    release_id: str | None = None,
) -> ReleaseRow:
    """Charge `curve_added` to `user` and record the release; the caller commits.

    Must run inside `Database.write_session()`. Raises `BudgetExceeded` (and records
    nothing) if the epsilon of the user's ledger plus `curve_added` at `delta` passes
    the user's budget, and Conflict if `delta` is not the node's delta in this
    transaction (the admin changed it since the release was priced). A zero curve
    (publishing what was already paid for) is never refused. The release's
    `epsilon_added` is the growth of the ledger's epsilon.
    """
    _check_write_session(session)
    ledger = _lock_ledger(session, user.id)
    now = session.scalar(_NODE_DELTA)  # shared lock (PostgreSQL): a change waits for us
    if now != delta:
        raise Conflict(
            f"The node's delta changed from {delta:g} to {now:g} while this release was "
            "priced; nothing was released or charged. Try again.",
            delta=now,
        )
    total = session.scalar(select(UserRow.budget).where(UserRow.id == user.id))
    before = RdpCurve.from_list(ledger.curve)
    after = before + curve_added
    spent_before = before.epsilon(delta)
    spent_after = after.epsilon(delta)
    needed = max(0.0, spent_after - spent_before)
    if not curve_added.is_zero and exceeds(spent_after, total):
        remaining = max(0.0, total - spent_before)
        raise BudgetExceeded(
            f"This release needs epsilon {needed:.6g} but only {remaining:.6g} of your "
            f"budget {total:.6g} is left (delta={delta:g}). Nothing was released or charged.",
            needed=needed,
            remaining=remaining,
            budget=total,
            delta=delta,
        )
    release = ReleaseRow(
        id=release_id or new_id(),
        user_id=user.id,
        model_id=model_id,
        object_id=object_id,
        kind=kind,
        mechanism=mechanism,
        params=dict(params),
        curve_added=curve_added.to_list(),
        epsilon_added=needed,
        epsilon_after=spent_after,
        result_path=result_path,
        result=dict(result) if result is not None else None,
    )
    session.add(release)
    ledger.curve = after.to_list()
    ledger.epsilon = spent_after
    ledger.updated_at = utcnow()
    session.flush()
    return release
