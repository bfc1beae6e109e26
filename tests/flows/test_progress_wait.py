"""`progress(wait=...)`: a long poll that answers when the job moves, never otherwise
early, and refuses what it cannot take with a typed error."""

from __future__ import annotations

import math
import time

import httpx
import pytest

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.flows.data import image_mlp, upload_images
from veil.client._models import ModelPointer


def _key(state: dict) -> tuple:
    return (
        state["job_id"],
        state["status"],
        state["epoch"],
        state["step"],
        state["queue_position"],
        len(state["metrics"]),
    )


def _fitting(node, *, max_iter: int) -> tuple[veil.Client, ModelPointer]:  # noqa: ANN001
    """(the admin, a data scientist's model) whose fit of `max_iter` epochs is queued."""
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=400)
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Patches"]
    model_ptr = image_mlp().compile(to=ds)
    x, y = data["train_images"], data["train_labels"]
    model_ptr.fit(x, y, max_iter=max_iter, batch_size=8, wait=False)
    return admin, model_ptr


def test_each_answer_is_a_move_and_the_last_is_the_end(sqlite_node) -> None:
    _, model_ptr = _fitting(sqlite_node, max_iter=10)
    state, answers = model_ptr.progress(), 0
    while state["status"] in ("queued", "running"):
        after = model_ptr.progress(wait=10)
        # The job writes progress every 0.5 s of training: a 10 s wait ends at a move.
        assert _key(after) != _key(state), after
        state, answers = after, answers + 1
    assert state["status"] == "done" and state["step"] == state["steps"]
    assert answers >= 2  # it ran, and it ended
    assert sqlite_node.ctx.signals._waiters == {}


def test_an_ended_or_absent_job_answers_before_the_wait(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=100)
    ds = make_ds(admin, sqlite_node)
    data = ds.datasets["Patches"]
    model_ptr = image_mlp().compile(to=ds)
    start = time.monotonic()
    assert model_ptr.progress(wait=10)["status"] == "idle"
    model_ptr.fit(data["train_images"], data["train_labels"], max_iter=1, batch_size=50)
    assert model_ptr.progress(wait=10)["status"] == "done"
    # Functional, not a speed check: two 10 s waits would take 20 s.
    assert time.monotonic() - start < 10


def test_another_users_model_is_not_found_and_never_waited_on(sqlite_node) -> None:
    admin, model_ptr = _fitting(sqlite_node, max_iter=50)
    other = make_ds(admin, sqlite_node)
    response = httpx.get(
        f"{sqlite_node.url}/api/v1/models/{model_ptr.id}/progress",
        params={"wait": 10},
        headers={"Authorization": f"Bearer {other._http.token}"},
    )
    assert response.status_code == 404
    assert "wait" not in response.text and "status" not in response.json().get("detail", {})
    model_ptr.cancel()
    assert model_ptr.wait(show=False)["status"] == "cancelled"


@pytest.mark.parametrize("wait", [-1, 10.5, math.inf, math.nan, "soon", "1e309"])
def test_a_bad_wait_is_a_typed_error(sqlite_node, wait: object) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=100)
    ds = make_ds(admin, sqlite_node)
    model_ptr = image_mlp().compile(to=ds)
    response = httpx.get(
        f"{sqlite_node.url}/api/v1/models/{model_ptr.id}/progress",
        params={"wait": wait},
        headers={"Authorization": f"Bearer {ds._http.token}"},
    )
    assert response.status_code == 422, response.text
    with pytest.raises(veil.ValidationError, match="wait"):
        model_ptr._http.get(f"/models/{model_ptr.id}/progress", params={"wait": wait})
