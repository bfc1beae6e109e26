"""The one exception tree of Veil, shared by the node and the client.

```
VeilError
 +-- TransportError        the node could not be reached
 +-- AuthenticationError   401: unknown credentials, expired or revoked token
 +-- PermissionDenied      403: the account may not do this
 +-- NotFound              404: no such object visible to this account (also a KeyError)
 +-- ValidationError       400/422: bad input; says what was expected and what arrived
 |    +-- SpecError        a model spec outside the whitelist or with shapes that do not fit
 |    +-- OutOfRange       rows a pointer does not have (also an IndexError)
 |    +-- RequestTooLarge  413: a request body over the node's limit
 +-- Conflict              409: the object exists already, or is in the wrong state
 +-- QuotaExceeded         409: the account holds as many of these as the node allows
 +-- BudgetExceeded        402: a release would spend more epsilon than is left
 +-- RateLimited           429: too many failed logins, or computations at once; retry later
 +-- JobFailed             a training job ended in failure
 +-- ServerError           500: a fault on the node (never the answer to bad input)
```

The node raises these in its services; the API turns each into a status code and a
JSON body `{"error": <class name>, "message": ..., "detail": {...}}`; the client turns
that body back into the same class, so `except veil.BudgetExceeded` works on both sides.
"""

from __future__ import annotations

import secrets
from typing import Any

__all__ = [
    "AuthenticationError",
    "BudgetExceeded",
    "Conflict",
    "JobFailed",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "QuotaExceeded",
    "RateLimited",
    "RequestTooLarge",
    "ServerError",
    "SpecError",
    "TransportError",
    "ValidationError",
    "VeilError",
    "error_from_body",
]


class VeilError(Exception):
    """Base of every error Veil raises on purpose."""

    status_code: int = 500

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message

    def to_body(self) -> dict[str, Any]:
        return {"error": type(self).__name__, "message": self.message, "detail": self.detail}


class TransportError(VeilError):
    status_code = 503


class AuthenticationError(VeilError):
    status_code = 401


class PermissionDenied(VeilError):
    status_code = 403


class NotFound(VeilError, KeyError):
    status_code = 404

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class ValidationError(VeilError, ValueError):
    status_code = 422


class SpecError(ValidationError):
    pass


class OutOfRange(ValidationError, IndexError):
    """Rows outside a pointer's public length; the message names that length."""


class RequestTooLarge(ValidationError):
    status_code = 413


class Conflict(VeilError):
    status_code = 409


class QuotaExceeded(VeilError):
    """The account holds as many jobs, models, drafts or private objects (or bytes of
    them) as the node allows one user; nothing was created. `detail` has `quota` (the
    node's limit, e.g. "max_models"), `limit`, `current` and `requested`; the message
    says what to delete or wait for.

    A 409 like `Conflict`, since freeing room and retrying resolves it, but not a
    `Conflict`: that one says "retry", and a retry alone never frees a quota.
    """

    status_code = 409


class BudgetExceeded(VeilError):
    """A release needs more epsilon than is left; `detail` has `needed` and `remaining`."""

    status_code = 402


class RateLimited(VeilError):
    status_code = 429


class JobFailed(VeilError):
    status_code = 409


class ServerError(VeilError):
    status_code = 500

    @classmethod
    def unexpected(cls) -> ServerError:
        """An unexpected fault, told by a random reference only: its text, or even its
        type, could depend on a private value (privacy contract 5). The node logs the
        whole of it under `detail["reference"]`."""
        reference = secrets.token_hex(6)
        return cls(
            f"Internal error on the node (reference {reference}); its log has the details.",
            reference=reference,
        )


_BY_NAME: dict[str, type[VeilError]] = {
    cls.__name__: cls
    for cls in (
        VeilError,
        TransportError,
        AuthenticationError,
        PermissionDenied,
        NotFound,
        ValidationError,
        SpecError,
        OutOfRange,
        RequestTooLarge,
        Conflict,
        QuotaExceeded,
        BudgetExceeded,
        RateLimited,
        JobFailed,
        ServerError,
    )
}


def error_from_body(status_code: int, body: Any) -> VeilError:
    """Rebuild the typed error a node answered with."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        cls = _BY_NAME.get(body["error"], VeilError)
        detail = body.get("detail") if isinstance(body.get("detail"), dict) else {}
        return cls(str(body.get("message", "")), **detail)
    for cls in _BY_NAME.values():
        if cls is not VeilError and cls.status_code == status_code:
            return cls(f"HTTP {status_code}: {body!r}")
    return ServerError(f"HTTP {status_code}: {body!r}")
