"""Every table of the node; importing this registers them all on Base.metadata."""

from veil.server.db.tables.accounts import NodeRow, TokenRow, UsageRow, UserRow
from veil.server.db.tables.datasets import AssetRow, AssetViewRow, DatasetRow
from veil.server.db.tables.ledger import LedgerRow, ReleaseRow
from veil.server.db.tables.models import (
    CartChangeRow,
    DraftRow,
    JobEpochRow,
    JobRow,
    ModelRow,
    ModelStateRow,
    PrivateObjectRow,
)

__all__ = [
    "AssetRow",
    "AssetViewRow",
    "CartChangeRow",
    "DatasetRow",
    "DraftRow",
    "JobEpochRow",
    "JobRow",
    "LedgerRow",
    "ModelRow",
    "ModelStateRow",
    "NodeRow",
    "PrivateObjectRow",
    "ReleaseRow",
    "TokenRow",
    "UsageRow",
    "UserRow",
]
