"""Every table of the node; importing this registers them all on Base.metadata."""

from veil.server.db.tables.accounts import NodeRow, TokenRow, UserRow

__all__ = ["NodeRow", "TokenRow", "UserRow"]
