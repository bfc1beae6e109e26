"""Datasets: assets with their public shapes, dtypes and bounds, and a preview of the mock.

Uploading stays in the CLI and the Python client; the page shows how.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from veil._exceptions import NotFound
from veil.server.api.deps import ContextDep, SessionDep
from veil.server.services import datasets
from veil.server.web.pages import PageRoute, render
from veil.server.web.png import encode_png
from veil.server.web.previews import image_layout, image_strip, mock_rows
from veil.server.web.session import PageUser

router = APIRouter(prefix="/datasets", route_class=PageRoute, include_in_schema=False)


@router.get("")
def datasets_page(
    request: Request, ctx: ContextDep, session: SessionDep, viewer: PageUser
) -> HTMLResponse:
    listings = datasets.list_datasets(session)
    infos = {a.id: datasets.asset_info(a) for listing in listings for a in listing.assets}
    tables = {
        asset_id: mock_rows(
            datasets.read_mock(session, ctx.arrays, user=viewer, pointer_id=asset_id)
        )
        for asset_id, info in infos.items()
        if image_layout(info.shape) is None
    }
    return render(
        request,
        "datasets.html",
        viewer=viewer,
        session=session,
        listings=listings,
        infos=infos,
        tables=tables,
    )


@router.get("/mock/{asset_id}.png")
def mock_images(asset_id: str, ctx: ContextDep, session: SessionDep, viewer: PageUser) -> Response:
    info = datasets.pointer_info(session, user=viewer, pointer_id=asset_id)
    layout = image_layout(info.shape)
    if layout is None:
        raise NotFound(f"Asset {info.name!r} of shape {info.shape} holds no images.")
    mock = datasets.read_mock(session, ctx.arrays, user=viewer, pointer_id=asset_id)
    pixels = image_strip(mock, layout=layout, bounds=info.bounds and info.bounds.overall)
    return Response(encode_png(pixels), media_type="image/png")
