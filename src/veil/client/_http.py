"""The one place that speaks HTTP to a node and turns error bodies into typed errors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from veil._exceptions import TransportError, ValidationError, error_from_body

__all__ = ["Http", "segment"]


def segment(value: object) -> str:
    """A name or id as one segment of a URL path: `a/b`, `?x=1` or `%00` stay the name
    they are, never more path or a query."""
    return quote(str(value), safe="")


API = "/api/v1"


class Http:
    """A thin wrapper over `httpx.Client` that knows the bearer token and the error shape."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        try:
            self._client = httpx.Client(
                base_url=self.base_url + API, transport=transport, timeout=timeout
            )
        except httpx.InvalidURL as exc:
            raise TransportError(f"Not a node URL: {base_url!r} ({exc})", url=base_url) from exc
        self.token: str | None = None

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self._client.request(
                method, path, json=json, params=params, content=content, headers=all_headers
            )
        except httpx.TransportError as exc:
            raise TransportError(
                f"Could not reach the node at {self.base_url}: {exc}", url=self.base_url
            ) from exc
        except httpx.InvalidURL as exc:
            raise TransportError(f"Not a URL of the node: {path!r} ({exc})") from exc
        except ValueError as exc:  # httpx encodes `json` strictly: no NaN, no infinity
            raise ValidationError(
                f"Expected numbers JSON can carry (finite). Received: {exc}"
            ) from exc
        if 300 <= response.status_code < 400:
            raise TransportError(
                f"The node answered {response.status_code} (a redirect to "
                f"{response.headers.get('location')!r}), which the client does not follow."
            )
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            raise error_from_body(response.status_code, body)
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        response = self.request("POST", path, **kwargs)
        return response.json() if response.content else None

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs).json()

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs).json()

    def delete(self, path: str, **kwargs: Any) -> Any:
        """The answer's JSON, or None for an empty one (204)."""
        response = self.request("DELETE", path, **kwargs)
        return response.json() if response.content else None

    def stream_get(self, path: str) -> httpx.Response:
        """A streamed GET; the caller closes it. Errors are raised before returning."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = self._client.send(
                self._client.build_request("GET", path, headers=headers), stream=True
            )
        except httpx.TransportError as exc:
            raise TransportError(f"Could not reach the node at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            response.read()
            try:
                body = response.json()
            except ValueError:
                body = response.text
            response.close()
            raise error_from_body(response.status_code, body)
        return response

    def close(self) -> None:
        self._client.close()
