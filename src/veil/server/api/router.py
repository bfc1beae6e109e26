"""All routes of the node, under /api/v1."""

from fastapi import APIRouter

from veil.server.api.routes import assets, auth, datasets, ledger, models, node, releases, users

api_router = APIRouter(prefix="/api/v1")
api_router.include_router(node.router)
api_router.include_router(auth.router)
api_router.include_router(users.router)
api_router.include_router(datasets.router)
api_router.include_router(assets.router)
api_router.include_router(models.router)
api_router.include_router(ledger.router)
api_router.include_router(releases.router)
