"""Publishing: weights and private objects leave the node only here, each one charged."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from veil.server.api.deps import ContextDep, CurrentUser, SessionDep
from veil.server.api.schemas import Strict
from veil.server.db.tables.accounts import UserRow
from veil.server.services import releases

__all__ = ["ReleaseOut", "router"]

router = APIRouter(tags=["releases"])


class ReleaseOut(BaseModel):
    id: str
    user_id: str
    kind: str
    mechanism: str
    params: dict[str, Any]
    epsilon_added: float
    epsilon_after: float
    model_id: str | None
    object_id: str | None
    created_at: datetime

    model_config = ConfigDict(from_attributes=True)


class PublishObjectIn(Strict):
    sigma: float | None = Field(default=None, description="noise multiplier: std / sensitivity")
    epsilon: float | None = Field(default=None, description="target epsilon of the Gaussian")
    clip: float | None = Field(
        default=None, description="L2 bound each row is clipped to (needed for unbounded outputs)"
    )


def get_publisher(session: SessionDep, user: CurrentUser) -> UserRow:
    """The caller, with the request's read session closed: a publish opens its own write
    transaction, and requests holding two connections each could drain the pool when
    many publish at once."""
    session.close()
    return user


Publisher = Annotated[UserRow, Depends(get_publisher)]


@router.post("/models/{model_id}/weights/publish", status_code=201)
def publish_weights(model_id: str, ctx: ContextDep, user: Publisher) -> ReleaseOut:
    release = releases.publish_weights(ctx.db, ctx.files, user=user, model_id=model_id)
    return ReleaseOut.model_validate(release)


@router.post("/objects/{object_id}/publish", status_code=201)
def publish_object(
    object_id: str, body: PublishObjectIn, ctx: ContextDep, user: Publisher
) -> ReleaseOut:
    release = releases.publish_object(
        ctx.db,
        ctx.files,
        user=user,
        object_id=object_id,
        sigma=body.sigma,
        epsilon=body.epsilon,
        clip=body.clip,
    )
    return ReleaseOut.model_validate(release)


@router.get("/releases")
def list_releases(session: SessionDep, user: CurrentUser) -> list[ReleaseOut]:
    return [ReleaseOut.model_validate(r) for r in releases.list_releases(session, user=user)]


@router.get("/releases/{release_id}")
def read_release(release_id: str, session: SessionDep, user: CurrentUser) -> ReleaseOut:
    return ReleaseOut.model_validate(
        releases.get_release(session, user=user, release_id=release_id)
    )


@router.get("/releases/{release_id}/result", response_model=None)
def release_result(
    release_id: str, session: SessionDep, ctx: ContextDep, user: CurrentUser
) -> Response:
    """The weights file (safetensors bytes) or, for an object, its noised value as JSON."""
    payload = releases.release_payload(session, ctx.files, user=user, release_id=release_id)
    if payload.path is not None:
        return FileResponse(
            payload.path,
            media_type="application/octet-stream",
            filename=payload.path.name,
        )
    return JSONResponse(payload.result)
