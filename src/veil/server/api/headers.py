"""Headers every answer carries, API, pages, `/docs` and static files alike."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BaseHeaders"]

BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",  # a JSON or .npy answer is never run as a page
    "X-Frame-Options": "DENY",  # no page of the node is framed (pages add CSP's too)
}


class BaseHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in BASE_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
