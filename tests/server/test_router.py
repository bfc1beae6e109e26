"""The API's routers are tried in an order chosen for speed: that order must not decide
which route answers."""

from __future__ import annotations

from itertools import combinations

from veil.server.api.router import API_ROUTERS


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/")


def _overlap(a: str, b: str) -> bool:
    """Whether one URL path could match both templates (a `{param}` takes one segment)."""
    sa, sb = _segments(a), _segments(b)
    return len(sa) == len(sb) and all(
        x == y or x.startswith("{") or y.startswith("{") for x, y in zip(sa, sb, strict=True)
    )


def test_no_path_matches_routes_of_two_routers() -> None:
    for (i, one), (j, other) in combinations(enumerate(API_ROUTERS), 2):
        for a in one.routes:
            for b in other.routes:
                assert not _overlap(a.path, b.path), (
                    f"{a.path} (router {i}) and {b.path} (router {j}) can match one URL: "
                    "their order in API_ROUTERS would decide which answers"
                )


def test_the_overlap_check_sees_an_overlap() -> None:
    assert _overlap("/models/{model_id}/step", "/models/drafts/step")
    assert not _overlap("/models/{model_id}/weights/publish", "/models/drafts/{id}/layers")
    assert not _overlap("/models/{model_id}", "/models/{model_id}/step")
