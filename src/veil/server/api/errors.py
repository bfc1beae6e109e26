"""Turn every error into a status code and a JSON body the client can rebuild."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from veil._exceptions import NotFound, ServerError, ValidationError, VeilError

__all__ = ["install_error_handlers"]

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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VeilError)
    async def _veil(_: Request, exc: VeilError) -> JSONResponse:
        return _respond(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message = "; ".join(_describe(e) for e in errors[:5])
        fields = [".".join(str(p) for p in e.get("loc", ())) for e in errors]
        return _respond(ValidationError(f"Invalid request: {message}", fields=fields))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _respond(NotFound(f"No such endpoint: {exc.detail}"))
        error = VeilError(str(exc.detail))
        error.status_code = exc.status_code
        return _respond(error)

    @app.exception_handler(Exception)
    async def _fault(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _respond(ServerError(f"Internal error on the node ({type(exc).__name__})."))
