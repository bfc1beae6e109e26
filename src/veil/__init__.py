"""Veil: train neural networks on private data that never leaves its domain node."""

from veil._exceptions import (
    AuthenticationError,
    BudgetExceeded,
    Conflict,
    JobFailed,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    SpecError,
    TransportError,
    ValidationError,
    VeilError,
)

__all__ = [
    "AuthenticationError",
    "BudgetExceeded",
    "Conflict",
    "JobFailed",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "SpecError",
    "TransportError",
    "ValidationError",
    "VeilError",
]
