"""Pointers to assets and to views of them: metadata, slicing, mocks, private values."""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from veil.server.api.deps import ContextDep, CurrentUser, SessionDep
from veil.server.api.errors import responses
from veil.server.api.routes.releases import NoiseIn, ReleaseOut
from veil.server.api.schemas import Integral, JsonInt, Strict
from veil.server.services import datasets, statistics
from veil.server.services.datasets import PointerInfo

router = APIRouter(prefix="/assets", tags=["assets"])

NPY = "application/octet-stream"
_BYTES = {"type": "string", "format": "binary"}


class PointerOut(BaseModel):
    id: str
    dataset_id: str
    asset_id: str
    name: str
    dtype: str
    shape: list[int]
    start: int
    stop: int
    step: int
    is_view: bool
    bounds: list[float | list[float]] | None = Field(
        description="[low, high] as the owner declared them: numbers, or one per channel"
    )
    mock_source: str
    mock_rows: int

    @classmethod
    def of(cls, info: PointerInfo) -> PointerOut:
        return cls(
            id=info.id,
            dataset_id=info.dataset_id,
            asset_id=info.asset_id,
            name=info.name,
            dtype=info.dtype,
            shape=list(info.shape),
            start=info.start,
            stop=info.stop,
            step=info.step,
            is_view=info.is_view,
            bounds=None if info.bounds is None else info.bounds.to_json(),
            mock_source=info.mock_source,
            mock_rows=info.mock_rows,
        )


class SliceIn(Strict):
    # Strict (as every request body): "3" or true are mistakes, not indices.
    start: JsonInt | None = None
    stop: JsonInt | None = None
    step: Annotated[int, Field(gt=0), Integral] | None = None


@router.get("/{pointer_id}", responses=responses(404))
def read_pointer(pointer_id: str, session: SessionDep, user: CurrentUser) -> PointerOut:
    return PointerOut.of(datasets.pointer_info(session, user=user, pointer_id=pointer_id))


@router.post("/{pointer_id}/slice", status_code=201, responses=responses(404))
def slice_pointer(
    pointer_id: str, body: SliceIn, session: SessionDep, user: CurrentUser
) -> PointerOut:
    info = datasets.slice_pointer(
        session, user=user, pointer_id=pointer_id, start=body.start, stop=body.stop, step=body.step
    )
    return PointerOut.of(info)


def _npy(description: str) -> dict[int | str, dict]:
    return {200: {"description": description, "content": {NPY: {"schema": _BYTES}}}}


@router.get(
    "/{pointer_id}/mock",
    response_class=Response,
    responses={**_npy("the mock rows as .npy bytes"), **responses(404)},
)
def read_mock(pointer_id: str, ctx: ContextDep, session: SessionDep, user: CurrentUser) -> Response:
    mock = datasets.read_mock(session, ctx.arrays, user=user, pointer_id=pointer_id)
    out = io.BytesIO()
    np.save(out, mock, allow_pickle=False)
    return Response(content=out.getvalue(), media_type=NPY)


@router.get(
    "/{pointer_id}/data",
    response_class=StreamingResponse,
    responses={**_npy("the private rows as .npy bytes (the admin only)"), **responses(403, 404)},
)
def read_data(
    pointer_id: str, ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> StreamingResponse:
    size, chunks = datasets.private_npy(session, ctx.arrays, user=user, pointer_id=pointer_id)
    return StreamingResponse(chunks, media_type=NPY, headers={"Content-Length": str(size)})


class StatisticsQuoteOut(BaseModel):
    rows: int
    channels: int
    sigma: float
    epsilon: float
    cost: float
    spent: float
    remaining: float
    delta: float


@router.post("/{pointer_id}/statistics/quote", responses=responses(404))
def quote_statistics(
    pointer_id: str, body: NoiseIn, ctx: ContextDep, user: CurrentUser
) -> StatisticsQuoteOut:
    quote = statistics.quote_statistics(
        ctx.db, ctx.arrays, user=user, pointer_id=pointer_id, sigma=body.sigma, epsilon=body.epsilon
    )
    return StatisticsQuoteOut(**vars(quote))


@router.post("/{pointer_id}/statistics", status_code=201, responses=responses(402, 404, 429))
def release_statistics(
    pointer_id: str, body: NoiseIn, ctx: ContextDep, user: CurrentUser
) -> ReleaseOut:
    """Per-channel mean and std of the pointer's rows, noised and charged."""
    with ctx.compute.admitted(user.id):  # reads every row: one of the user's slots
        release = statistics.release_statistics(
            ctx.db,
            ctx.arrays,
            ctx.files,
            user=user,
            pointer_id=pointer_id,
            sigma=body.sigma,
            epsilon=body.epsilon,
        )
    return ReleaseOut.of(release, with_result=True)
