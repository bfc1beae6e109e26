"""Budget bars: each account's epsilon spent, the cart of its unpublished models, what is left.

The cart part is what publishing all of the account's unpublished models now would add
to its spending: the unpaid curves of its models (cart minus what their releases
charged) composed with its ledger, at the node's delta. Nothing here is charged.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from veil.privacy import RdpCurve
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.ledger import LedgerRow
from veil.server.db.tables.models import ModelRow
from veil.server.services.ledger import ledger_overview

__all__ = ["BudgetBar", "budget_bars"]


@dataclass(frozen=True)
class BudgetBar:
    """One account's budget split into spent, cart (unpublished) and left, in epsilon."""

    user_id: str
    email: str
    name: str
    role: str
    disabled: bool
    budget: float
    spent: float
    cart: float
    left: float
    releases: int


def _unpaid_by_owner(session: Session, owner_ids: set[str]) -> dict[str, RdpCurve]:
    unpaid: dict[str, RdpCurve] = {}
    query = select(ModelRow.owner_id, ModelRow.cart_curve, ModelRow.charged_curve).where(
        ModelRow.owner_id.in_(owner_ids)
    )
    for owner_id, cart, charged in session.execute(query):
        increment = RdpCurve.from_list(cart) - RdpCurve.from_list(charged)
        if not increment.is_zero:
            unpaid[owner_id] = unpaid.get(owner_id, RdpCurve.zero()) + increment
    return unpaid


def budget_bars(session: Session, *, delta: float, user_id: str | None = None) -> list[BudgetBar]:
    """Every account's bar (oldest account first), or only `user_id`'s."""
    entries = [e for e in ledger_overview(session, delta=delta) if user_id in (None, e.user_id)]
    ids = {e.user_id for e in entries}
    query = select(UserRow.id, UserRow.disabled).where(UserRow.id.in_(ids))
    disabled = {user: off for user, off in session.execute(query)}
    unpaid = _unpaid_by_owner(session, ids)
    ledgers = {
        row.user_id: RdpCurve.from_list(row.curve)
        for row in session.scalars(select(LedgerRow).where(LedgerRow.user_id.in_(set(unpaid))))
    }
    bars = []
    for e in entries:
        cart = 0.0
        if e.user_id in unpaid:
            spent_curve = ledgers.get(e.user_id, RdpCurve.zero())
            cart = max(0.0, (spent_curve + unpaid[e.user_id]).epsilon(delta) - e.spent)
        bars.append(
            BudgetBar(
                user_id=e.user_id,
                email=e.email,
                name=e.name,
                role=e.role,
                disabled=bool(disabled.get(e.user_id)),
                budget=e.budget,
                spent=e.spent,
                cart=cart,
                left=max(0.0, e.budget - e.spent - cart),
                releases=e.releases,
            )
        )
    return bars
