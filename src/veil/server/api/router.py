"""All routes of the node, under /api/v1."""

from fastapi import APIRouter

from veil.server.api.routes import auth, node, users

api_router = APIRouter(prefix="/api/v1")
api_router.include_router(node.router)
api_router.include_router(auth.router)
api_router.include_router(users.router)
