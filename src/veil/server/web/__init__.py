"""The data owner's dashboard: server-rendered pages at the node's root, their static
files (vendored, no CDN) and the API's reference at /docs, all served by the node."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from veil.server.web import docs
from veil.server.web.routes import web_router

__all__ = ["STATIC_DIR", "install_dashboard"]

STATIC_DIR = Path(__file__).parent / "static"


def install_dashboard(app: FastAPI) -> None:
    """Add the pages, /static and /docs; create the app with docs_url=None, redoc_url=None."""
    app.include_router(web_router)
    app.include_router(docs.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
