"""Datasets: listing (everyone logged in), uploading and deleting (the admin).

An upload is three steps: POST /datasets/uploads declares it, PUT .../{asset}/{part}
streams each array's raw .npy bytes (SHA-256 in `X-Veil-SHA256`), POST .../commit turns
it into a dataset. DELETE /datasets/uploads/{id} abandons it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from veil._exceptions import ValidationError
from veil.server.api.deps import AdminUser, ContextDep, CurrentUser, SessionDep
from veil.server.api.errors import responses
from veil.server.api.routes.assets import PointerOut
from veil.server.api.schemas import JsonInt, Strict, UtcDatetime
from veil.server.services import datasets, uploads
from veil.server.services.datasets import DatasetListing

router = APIRouter(prefix="/datasets", tags=["datasets"])


class AssetDeclIn(Strict):
    name: str = Field(max_length=64)
    dtype: str = Field(max_length=32)
    shape: list[JsonInt] = Field(max_length=uploads.MAX_NDIM)
    bounds: list[float | list[float]] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="[low, high]: numbers, or lists of one per channel (axis 1)",
    )
    mock_shape: list[JsonInt] | None = Field(default=None, max_length=uploads.MAX_NDIM)


class UploadIn(Strict):
    name: str = Field(max_length=100)
    description: str = Field(default="", max_length=10_000)
    assets: list[AssetDeclIn] = Field(max_length=uploads.MAX_ASSETS)
    subject: str | None = Field(
        default=None, description="the asset holding each row's data subject (a person's id)"
    )


class UploadOut(BaseModel):
    id: str


class PartOut(BaseModel):
    asset: str
    part: str
    nbytes: int
    sha256: str


class DatasetOut(BaseModel):
    id: str
    name: str
    description: str
    created_at: UtcDatetime
    assets: list[PointerOut]
    unit: str  # the unit of privacy: "row", or "subject" when rows belong to persons
    subjects: int  # how many (public, like the number of rows)
    subject_asset: str | None

    @classmethod
    def of(cls, listing: DatasetListing) -> DatasetOut:
        d = listing.dataset
        return cls(
            id=d.id,
            name=d.name,
            description=d.description,
            created_at=d.created_at,
            assets=[PointerOut.of(datasets.asset_info(asset)) for asset in listing.assets],
            unit=d.unit,
            subjects=d.n_subjects,
            subject_asset=d.subject_asset,
        )


@router.get("")
def list_datasets(session: SessionDep, _: CurrentUser) -> list[DatasetOut]:
    return [DatasetOut.of(listing) for listing in datasets.list_datasets(session)]


@router.post("/uploads", status_code=201, responses=responses(403, 409))
def create_upload(
    body: UploadIn, ctx: ContextDep, session: SessionDep, user: AdminUser
) -> UploadOut:
    decls = [
        uploads.declare(
            name=a.name, dtype=a.dtype, shape=a.shape, bounds=a.bounds, mock_shape=a.mock_shape
        )
        for a in body.assets
    ]
    upload_id = uploads.create_upload(
        session,
        ctx.arrays,
        user=user,
        name=body.name,
        description=body.description,
        assets=decls,
        max_bytes=ctx.settings.max_upload_bytes,
        subject=body.subject,
    )
    return UploadOut(id=upload_id)


@router.put(
    "/uploads/{upload_id}/{asset}/{part}",
    responses=responses(403, 404),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "the array's raw .npy bytes, as declared",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_part(
    upload_id: str,
    asset: str,
    part: Literal["data", "mock"],
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    user: AdminUser,
    x_veil_sha256: Annotated[str, Header(max_length=64)],
) -> PartOut:
    # The caller is known; hand the connection back rather than hold it for the whole stream.
    await run_in_threadpool(session.close)
    try:
        received = await uploads.receive_part(
            ctx.arrays,
            user=user,
            upload_id=upload_id,
            asset=asset,
            part=part,
            sha256=x_veil_sha256,
            body=request.stream(),
        )
    except ClientDisconnect:
        raise ValidationError(f"The upload of asset {asset!r} was interrupted.") from None
    return PartOut(
        asset=received.asset, part=received.part, nbytes=received.nbytes, sha256=received.sha256
    )


@router.post("/uploads/{upload_id}/commit", status_code=201, responses=responses(403, 404, 409))
def commit_upload(
    upload_id: str, ctx: ContextDep, session: SessionDep, user: AdminUser
) -> DatasetOut:
    dataset = uploads.commit_upload(session, ctx.arrays, user=user, upload_id=upload_id)
    return DatasetOut.of(datasets.get_dataset(session, name_or_id=dataset.id))


@router.delete("/uploads/{upload_id}", status_code=204, responses=responses(403, 404))
def abort_upload(upload_id: str, ctx: ContextDep, user: AdminUser) -> None:
    uploads.abort_upload(ctx.arrays, user=user, upload_id=upload_id)


@router.get("/{name_or_id}", responses=responses(404))
def read_dataset(name_or_id: str, session: SessionDep, _: CurrentUser) -> DatasetOut:
    return DatasetOut.of(datasets.get_dataset(session, name_or_id=name_or_id))


@router.delete("/{name_or_id}", status_code=204, responses=responses(403, 404, 409))
def delete_dataset(name_or_id: str, ctx: ContextDep, session: SessionDep, _: AdminUser) -> None:
    datasets.delete_dataset(session, ctx.arrays, name_or_id=name_or_id)
