"""Turn every error into a status code and one JSON body the client can rebuild.

Every error answer, whatever raised it (a service, request validation, an unknown
route, the body-size limit, a fault), has the body `ErrorOut`:
`{"error": <class name>, "message": ..., "detail": {...}}`. The OpenAPI document says
so: `responses(...)` declares a route's own error statuses, and `truthful_openapi`
adds those every route of a kind can answer (401 with a token, 422 and 413 with input)
and replaces FastAPI's default validation schema by `ErrorOut`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from veil._exceptions import NotFound, RequestTooLarge, ServerError, ValidationError, VeilError

__all__ = [
    "ErrorOut",
    "install_error_handlers",
    "responses",
    "truthful_openapi",
    "validation_error",
]

log = logging.getLogger("veil.api")

_MEANING = {
    401: "No valid token: log in (again).",
    402: "The privacy budget cannot pay for this (BudgetExceeded); nothing was charged.",
    403: "This account may not do this.",
    404: "No such object among those this account may see.",
    405: "This endpoint does not take that method.",
    409: "The object exists already, or is in the wrong state (e.g. training) "
    "(Conflict); or the account holds as many of these as the node allows one user "
    "(QuotaExceeded).",
    413: "The request body is larger than the node accepts.",
    422: "Invalid input: the message says what was expected and what arrived.",
    429: "Too many failed attempts (wait `detail.retry_after` seconds), or too many of your "
    "steps and evaluations computing at once (retry when one answers).",
}


class ErrorOut(BaseModel):
    """The body of every error answer; the client turns it back into the same class."""

    error: str = Field(description="the class of the error, e.g. BudgetExceeded")
    message: str = Field(description="what was expected and what arrived")
    detail: dict[str, Any] = Field(description="the figures behind the message")


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of a route's own error statuses, all with `ErrorOut`."""
    return {code: {"model": ErrorOut, "description": _MEANING[code]} for code in statuses}


def _respond(error: VeilError, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    retry_after = error.detail.get("retry_after")
    if isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return JSONResponse(status_code=error.status_code, content=error.to_body(), headers=headers)


_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _describe(err: dict) -> str:
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    received = err.get("input")
    text = repr(received)
    if len(text) > 80:
        text = text[:77] + "..."
    message = err.get("msg", "invalid")
    if err.get("type") in _BOUNDS:  # pydantic writes 1e-300 out in 300 digits
        key, sign = _BOUNDS[err["type"]]
        message = f"Input should be {sign} {err['ctx'][key]:g}"
    return f"{where or 'body'}: {message}. Received: {text}"


def validation_error(exc: RequestValidationError) -> ValidationError:
    """The typed error for a request FastAPI could not parse: which fields, and why."""
    errors = exc.errors()
    message = "; ".join(_describe(e) for e in errors[:5])
    fields = [".".join(str(p) for p in e.get("loc", ())) for e in errors]
    return ValidationError(f"Invalid request: {message}", fields=fields)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VeilError)
    async def _veil(_: Request, exc: VeilError) -> JSONResponse:
        return _respond(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _respond(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _respond(NotFound(f"No such endpoint: {exc.detail}"))
        if exc.status_code == 413:  # the body limit, while the body was read
            return _respond(RequestTooLarge(str(exc.detail)))
        if exc.status_code == 400:  # a body FastAPI could not decode (not UTF-8, say)
            return _respond(ValidationError(f"Invalid request: {exc.detail}."))
        error = VeilError(str(exc.detail))
        error.status_code = exc.status_code
        if exc.status_code == 405:
            return _respond(error, {"Allow": ", ".join(_allowed_methods(request))})
        return _respond(error, exc.headers)

    @app.exception_handler(DataError)
    async def _unstorable(_: Request, exc: DataError) -> JSONResponse:
        # What a check before the database missed: its text may quote the value.
        log.warning("the database refused a value: %s", exc.orig)
        return _respond(
            ValidationError(
                "Invalid input: a value the database cannot store (a NUL character in "
                "text, or a number outside its column's range)."
            )
        )

    app.add_middleware(_FaultBarrier)


def _allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document gives this path. Starlette names only those of
    the first route it tried, and a path often has several routes (GET and DELETE of a
    dataset); where templates overlap (`/models/drafts`, `/models/{model_id}`), the one
    with the most literal segments is the resource meant."""
    best, methods = -1, set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if not re.fullmatch(pattern, request.url.path):
            continue
        literal = sum(1 for part in template.split("/") if not part.startswith("{"))
        if literal > best:
            best, methods = literal, set()
        if literal == best:
            methods |= {method.upper() for method in operations}
    return sorted(methods)


class _FaultBarrier:
    """Answer an unexpected error with a 500 JSON body and keep the connection usable.

    (A plain `exception_handler(Exception)` answers too, but Starlette then re-raises
    and the server drops the connection.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            error = ServerError.unexpected()
            log.exception("unhandled error (reference %s)", error.detail["reference"])
            if started:
                raise
            await _respond(error)(scope, receive, send)


_ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}


def _error_entry(code: int) -> dict[str, Any]:
    return {
        "description": _MEANING[code],
        "content": {"application/json": {"schema": _ERROR_REF}},
    }


def truthful_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """`app.openapi` with the error statuses every route of a kind can answer."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path in schema["paths"].values():
                for operation in path.values():
                    _add_common_errors(operation)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            components["ErrorOut"] = ErrorOut.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def _add_common_errors(operation: dict[str, Any]) -> None:
    answers = operation.setdefault("responses", {})
    takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
    common = [
        (401, bool(operation.get("security"))),
        (413, "requestBody" in operation),
        (422, takes_input),
    ]
    for code, applies in common:
        if applies:
            answers[str(code)] = _error_entry(code)
