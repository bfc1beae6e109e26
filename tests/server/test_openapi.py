"""Problem 6 of issue 8: the OpenAPI document says what the node answers.

Timezone-aware datetimes, one error schema for every error answer, every status each
route can answer documented; and Schemathesis with `--checks all` finds no failure (a
few examples per operation here; `python -m tests.api_fuzz` runs it at length).
"""

from __future__ import annotations

from datetime import datetime

import httpx

from tests.api_fuzz import fuzz, seed
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login

ERROR = {"$ref": "#/components/schemas/ErrorOut"}


def test_every_error_answer_is_documented_with_one_schema(sqlite_node) -> None:
    document = httpx.get(sqlite_node.url + "/openapi.json").json()
    assert set(document["components"]["schemas"]["ErrorOut"]["required"]) == {
        "error",
        "message",
        "detail",
    }
    assert "HTTPValidationError" not in document["components"]["schemas"]
    statuses = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            answers = operation["responses"]
            statuses[f"{method.upper()} {path}"] = set(answers)
            for code, answer in answers.items():
                if int(code) >= 400:
                    assert answer["content"]["application/json"]["schema"] == ERROR, (path, code)
    assert {"401", "403", "413", "422", "429"} <= statuses["POST /api/v1/auth/login"]
    assert {"401", "404", "409", "413", "422"} <= statuses["POST /api/v1/models/{model_id}/step"]
    assert {"402", "404", "409"} <= statuses["POST /api/v1/models/{model_id}/fit"]
    assert {"401", "403"} <= statuses["GET /api/v1/ledger"]
    assert "429" in statuses["POST /api/v1/auth/password"]


def test_datetimes_carry_their_offset_and_errors_their_body(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    me = admin._http.get("/users/me")
    assert datetime.fromisoformat(me["created_at"]).utcoffset() is not None  # SQLite: naive
    for answer in (
        httpx.get(sqlite_node.url + "/api/v1/users/me"),  # 401
        httpx.post(sqlite_node.url + "/api/v1/auth/login", content=b"\xff\xfe"),  # 422
        httpx.options(sqlite_node.url + "/api/v1/datasets/x"),  # 405
    ):
        assert set(answer.json()) == {"error", "message", "detail"}, answer.text
    allowed = httpx.options(sqlite_node.url + "/api/v1/datasets/x").headers["Allow"]
    assert allowed == "DELETE, GET"  # every method of the path, not the first route's


def test_schemathesis_finds_no_failure(sqlite_node, tmp_path) -> None:
    token = seed(sqlite_node)["data_scientist"]
    result = fuzz(sqlite_node, token=token, max_examples=3, report=tmp_path / "junit.xml")
    assert result.returncode == 0, result.stdout[-15000:]
