"""Publishing: weights and private objects leave the node only here, each one charged."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from veil.privacy import SIGMA_MAX, SIGMA_MIN
from veil.server.api.deps import ContextDep, CurrentUser, SessionDep
from veil.server.api.errors import responses
from veil.server.api.schemas import MIN_POSITIVE, Strict, UtcDatetime
from veil.server.db.tables.ledger import ReleaseRow
from veil.server.services import private_objects, releases

__all__ = ["NoiseIn", "ReleaseOut", "router"]

router = APIRouter(tags=["releases"])


class ReleaseOut(BaseModel):
    """A release: `cost` is what it added to the epsilon spent, `spent_after` the spent
    after it. `result` (the noised values, their noise std and their clipped value) comes
    with the answer to the publish itself, and from `GET /releases/{id}/result` after."""

    id: str
    user_id: str
    kind: str
    mechanism: str
    params: dict[str, Any]
    cost: float
    spent_after: float
    model_id: str | None
    object_id: str | None
    created_at: UtcDatetime
    result: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: ReleaseRow, *, with_result: bool = False) -> ReleaseOut:
        return cls(
            id=row.id,
            user_id=row.user_id,
            kind=row.kind,
            mechanism=row.mechanism,
            params=row.params,
            cost=row.epsilon_added,
            spent_after=row.epsilon_after,
            model_id=row.model_id,
            object_id=row.object_id,
            created_at=row.created_at,
            result=row.result if with_result else None,
        )


class NoiseIn(Strict):
    sigma: float | None = Field(
        default=None,
        ge=SIGMA_MIN,
        le=SIGMA_MAX,
        description="noise multiplier: std / sensitivity, in the range the node allows",
    )
    epsilon: float | None = Field(
        default=None, ge=MIN_POSITIVE, description="target epsilon of the Gaussian"
    )


class PublishObjectIn(NoiseIn):
    clip: float | None = Field(
        default=None,
        ge=MIN_POSITIVE,
        description="L2 bound each row is clipped to (needed for unbounded outputs)",
    )


@router.post(
    "/models/{model_id}/weights/publish", status_code=201, responses=responses(402, 404, 409)
)
def publish_weights(model_id: str, ctx: ContextDep, user: CurrentUser) -> ReleaseOut:
    release = releases.publish_weights(ctx.db, ctx.files, user=user, model_id=model_id)
    return ReleaseOut.of(release)


@router.post("/objects/{object_id}/publish", status_code=201, responses=responses(402, 404, 409))
def publish_object(
    object_id: str, body: PublishObjectIn, ctx: ContextDep, user: CurrentUser
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
    return ReleaseOut.of(release, with_result=True)


@router.delete("/objects/{object_id}", status_code=204, responses=responses(404))
def delete_object(object_id: str, session: SessionDep, user: CurrentUser) -> None:
    """Delete your private object, to free `max_objects`; its releases stay."""
    private_objects.delete_object(session, user=user, object_id=object_id)


@router.get("/releases")
def list_releases(session: SessionDep, user: CurrentUser) -> list[ReleaseOut]:
    return [ReleaseOut.of(r) for r in releases.list_releases(session, user=user)]


@router.get("/releases/{release_id}", responses=responses(404))
def read_release(release_id: str, session: SessionDep, user: CurrentUser) -> ReleaseOut:
    return ReleaseOut.of(releases.get_release(session, user=user, release_id=release_id))


@router.get(
    "/releases/{release_id}/result",
    response_model=None,
    responses={
        200: {
            "description": "The weights (safetensors bytes) or an object's noised values",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
            },
        },
        **responses(404),
    },
)
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
