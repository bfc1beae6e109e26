"""The dashboard's pages, each under its own path at the node's root."""

from fastapi import APIRouter

from veil.server.web.routes import access, datasets, jobs, ledger, overview, users

__all__ = ["web_router"]

web_router = APIRouter()
for module in (access, overview, users, ledger, jobs, datasets):
    web_router.include_router(module.router)
