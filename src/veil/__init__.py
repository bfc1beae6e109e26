"""Veil: train neural networks on private data that never leaves its domain node."""

__version__ = "0.1.0"

from veil._exceptions import (
    AuthenticationError,
    BudgetExceeded,
    Conflict,
    JobFailed,
    NotFound,
    OutOfRange,
    PermissionDenied,
    RateLimited,
    ServerError,
    SpecError,
    TransportError,
    ValidationError,
    VeilError,
)
from veil.client import (
    AssetPointer,
    Client,
    Dataset,
    DatasetsView,
    PrivacyBudget,
    PrivatePointer,
    Published,
    WeightsPointer,
    login,
)

__all__ = [
    "AssetPointer",
    "Client",
    "Dataset",
    "DatasetsView",
    "PrivacyBudget",
    "PrivatePointer",
    "Published",
    "WeightsPointer",
    "AuthenticationError",
    "BudgetExceeded",
    "Conflict",
    "JobFailed",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "SpecError",
    "TransportError",
    "ValidationError",
    "VeilError",
    "__version__",
    "login",
]
