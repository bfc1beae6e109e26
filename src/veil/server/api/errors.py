"""Turn every error into a status code and a JSON body the client can rebuild."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from veil._exceptions import NotFound, ServerError, ValidationError, VeilError

__all__ = ["install_error_handlers", "validation_error"]

log = logging.getLogger("veil.api")


def _respond(error: VeilError) -> JSONResponse:
    return JSONResponse(status_code=error.status_code, content=error.to_body())


def _describe(err: dict) -> str:
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    received = err.get("input")
    text = repr(received)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{where or 'body'}: {err.get('msg', 'invalid')}. Received: {text}"


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
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _respond(NotFound(f"No such endpoint: {exc.detail}"))
        error = VeilError(str(exc.detail))
        error.status_code = exc.status_code
        return _respond(error)

    app.add_middleware(_FaultBarrier)


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
        except Exception as exc:
            log.exception("unhandled error")
            if started:
                raise
            error = ServerError(f"Internal error on the node ({type(exc).__name__}).")
            await _respond(error)(scope, receive, send)
