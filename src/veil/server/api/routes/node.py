"""The node's public identity and its admin-set limits (model size, fit length, per-user
quotas: `services.quotas`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field

from veil import __version__
from veil.server.api.deps import AdminUser, SessionDep
from veil.server.api.errors import responses
from veil.server.api.schemas import MIN_POSITIVE, Integral, Strict
from veil.server.services.node import get_node
from veil.server.settings import MAX_DB_BIGINT, MAX_DB_INT

router = APIRouter(prefix="/node", tags=["node"])


class NodeOut(BaseModel):
    name: str
    version: str
    delta: float
    max_params: int
    max_flops: int
    max_fit_steps: int = Field(description="the most steps one fit may plan")
    max_running_jobs: int = Field(description="the most jobs one user may have running")
    max_active_jobs: int = Field(description="the most jobs one user may have queued or running")
    max_models: int = Field(description="the most models one user may hold")
    max_drafts: int = Field(description="the most uncompiled drafts one user may hold")
    max_objects: int = Field(description="the most private objects one user may hold")
    max_object_bytes: int = Field(description="the most bytes one user's private objects hold")


class NodeSettingsIn(Strict):
    delta: float | None = Field(default=None, ge=MIN_POSITIVE, lt=1)
    max_params: Annotated[int, Field(gt=0, le=MAX_DB_INT), Integral] | None = None
    max_flops: Annotated[int, Field(gt=0, le=MAX_DB_INT), Integral] | None = None
    max_fit_steps: Annotated[int, Field(gt=0, le=MAX_DB_INT), Integral] | None = None
    max_running_jobs: Annotated[int, Field(gt=0, le=1000), Integral] | None = None
    max_active_jobs: Annotated[int, Field(gt=0, le=MAX_DB_INT), Integral] | None = None
    max_models: Annotated[int, Field(gt=0, le=MAX_DB_INT), Integral] | None = None
    max_drafts: Annotated[int, Field(gt=0, le=MAX_DB_INT), Integral] | None = None
    max_objects: Annotated[int, Field(ge=2, le=MAX_DB_INT), Integral] | None = None
    max_object_bytes: Annotated[int, Field(gt=0, le=MAX_DB_BIGINT), Integral] | None = None


def _out(session: SessionDep) -> NodeOut:
    node = get_node(session)
    return NodeOut(
        name=node.name,
        version=__version__,
        delta=node.delta,
        max_params=node.max_params,
        max_flops=node.max_flops,
        max_fit_steps=node.max_fit_steps,
        max_running_jobs=node.max_running_jobs,
        max_active_jobs=node.max_active_jobs,
        max_models=node.max_models,
        max_drafts=node.max_drafts,
        max_objects=node.max_objects,
        max_object_bytes=node.max_object_bytes,
    )


@router.get("")
def read_node(session: SessionDep) -> NodeOut:
    return _out(session)


@router.patch("", responses=responses(403))
def update_node(body: NodeSettingsIn, session: SessionDep, _: AdminUser) -> NodeOut:
    node = get_node(session)
    for key, value in body.model_dump(exclude_none=True).items():
        setattr(node, key, value)
    session.commit()
    return _out(session)
