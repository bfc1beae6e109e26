"""The API's reference at /docs, with Swagger UI served by the node (works offline).

The page carries the dashboard's Content-Security-Policy, and allows one thing more:
Swagger UI's one inline script, by its hash (the script is the same for every answer).
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from veil.server.web.pages import HEADERS

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
_SWAGGER = "/static/vendor/swagger-ui"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def _policy(page: bytes) -> str:
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return f"{HEADERS['Content-Security-Policy']}; script-src 'self' {hashes}"


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - API",
        swagger_js_url=f"{_SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{_SWAGGER}/swagger-ui.css",
        swagger_favicon_url=f"{_SWAGGER}/favicon-32x32.png",
        # No badge from the online validator: the page must not reach outside the node.
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers.update({**HEADERS, "Content-Security-Policy": _policy(page.body)})
    return page
