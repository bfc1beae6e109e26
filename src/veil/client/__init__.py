"""The Python client of a Veil domain node."""

from veil.client._client import Client, login
from veil.client._datasets import AssetPointer, Dataset, DatasetsView
from veil.client._models import MetricsWithheld, ModelPointer
from veil.client._objects import PrivatePointer, WeightsPointer
from veil.client._releases import Ledger, LedgerEntry, PrivacyBudget, Published, Releases
from veil.client._users import User, UsersAPI

__all__ = [
    "AssetPointer",
    "Client",
    "Dataset",
    "DatasetsView",
    "Ledger",
    "LedgerEntry",
    "MetricsWithheld",
    "ModelPointer",
    "PrivacyBudget",
    "PrivatePointer",
    "Published",
    "Releases",
    "User",
    "UsersAPI",
    "WeightsPointer",
    "login",
]
