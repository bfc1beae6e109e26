"""The node's public identity and its admin-set limits."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from veil import __version__
from veil.server.api.deps import AdminUser, SessionDep
from veil.server.api.schemas import Strict
from veil.server.services.node import get_node

router = APIRouter(prefix="/node", tags=["node"])


class NodeOut(BaseModel):
    name: str
    version: str
    delta: float
    max_params: int
    max_flops: int


class NodeSettingsIn(Strict):
    delta: float | None = Field(default=None, gt=0, lt=1)
    max_params: int | None = Field(default=None, gt=0)
    max_flops: int | None = Field(default=None, gt=0)


def _out(session: SessionDep) -> NodeOut:
    node = get_node(session)
    return NodeOut(
        name=node.name,
        version=__version__,
        delta=node.delta,
        max_params=node.max_params,
        max_flops=node.max_flops,
    )


@router.get("")
def read_node(session: SessionDep) -> NodeOut:
    return _out(session)


@router.patch("")
def update_node(body: NodeSettingsIn, session: SessionDep, _: AdminUser) -> NodeOut:
    node = get_node(session)
    for key, value in body.model_dump(exclude_none=True).items():
        setattr(node, key, value)
    session.commit()
    return _out(session)
