"""The request-body limit: a body larger than the node accepts is refused before it is
read, not after it was parsed.

A declared `Content-Length` over the limit is answered 413 at once, without reading a
byte of the body; a body sent without one (chunked) is counted as it arrives and
refused as soon as it passes the limit. Array uploads stream their parts through their
own route and limit (`max_upload_bytes`), so those requests are not counted here.
"""

from __future__ import annotations

import re

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from veil._exceptions import RequestTooLarge, ValidationError

__all__ = ["BodyLimit", "NoNulInUrl"]

_UPLOAD_PART = re.compile(r"^/api/v1/datasets/uploads/[^/]+/[^/]+/[^/]+$")


def _refusal(limit: int, received: str) -> RequestTooLarge:
    return RequestTooLarge(
        f"Expected a request body of at most {limit} bytes. Received: {received}",
        max_bytes=limit,
    )


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exempt = scope["type"] != "http" or (
            scope["method"] == "PUT" and _UPLOAD_PART.match(scope["path"])
        )
        if exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            error = _refusal(self.max_bytes, f"Content-Length: {int(declared)}")
            await JSONResponse(error.to_body(), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    error = _refusal(self.max_bytes, f"more than {self.max_bytes} bytes")
                    # FastAPI passes an HTTPException raised while reading the body on to
                    # the error handlers, which answer with the usual error body.
                    raise HTTPException(413, detail=error.message)
            return message

        await self.app(scope, counting_receive, send)


class NoNulInUrl:
    """Refuse a path or query with a NUL character (`%00`): no id or name holds one,
    and PostgreSQL cannot even compare one, so it is refused the same on every
    database, before any route reads it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")
        ):
            error = ValidationError(
                "Invalid request: the URL holds a NUL character (%00), which no id, name "
                f"or parameter does. Received: {scope['path']!r}"
            )
            await JSONResponse(error.to_body(), status_code=422)(scope, receive, send)
            return
        await self.app(scope, receive, send)
