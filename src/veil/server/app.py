"""The app factory: nothing is built at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from veil import __version__
from veil.server.api.errors import install_error_handlers, truthful_openapi
from veil.server.api.headers import BaseHeaders
from veil.server.api.limits import BodyLimit, NoNulInUrl
from veil.server.api.router import install_api
from veil.server.context import NodeContext
from veil.server.services.node import bootstrap
from veil.server.settings import Settings
from veil.server.web import install_dashboard

__all__ = ["create_app"]

log = logging.getLogger("veil.node")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    ctx = NodeContext.create(settings)
    ctx.db.migrate()
    with ctx.db.session() as session:
        node = bootstrap(session, settings)
        log.info("node %s ready (database %s)", node.name, ctx.db.engine.url.render_as_string())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ctx.start()
        try:
            yield
        finally:
            ctx.stop()

    # /docs is the dashboard's (Swagger UI served by the node); ReDoc would need a CDN.
    app = FastAPI(
        title="Veil domain node",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.node = ctx
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(NoNulInUrl)
    app.add_middleware(BaseHeaders)
    install_api(app)
    install_dashboard(app)
    app.openapi = truthful_openapi(app)  # type: ignore[method-assign]
    return app
