"""Problem 3 of issue 8: bounded work, and no input that answers 500.

The node refuses fits longer than its `max_fit_steps` and fits the budget could not
publish, range-checks every number before the database or the accountant sees it,
refuses an oversized body before reading it, and lets a draft grow no larger than a
compiled spec may be. One user's jobs never hold every worker; queued jobs show their
place in line.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.flows.data import upload_images
from veil import nn
from veil.nn.spec import MAX_LAYERS


def _model() -> nn.Model:
    model = nn.Model()
    model.add(nn.Flatten(input_shape=(None, 1, 28, 28)))
    model.add(nn.Dense(1, activation="sigmoid"))
    return model


@pytest.fixture
def setup(node):
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=120)
    ds = make_ds(admin, node)
    data = ds.datasets["Patches"]
    return node, admin, ds, data["train_images"], data["train_labels"]


def test_fits_longer_than_the_node_allows_are_refused_with_the_figures(setup) -> None:
    _, admin, ds, x, y = setup
    model_ptr = _model().compile(to=ds)
    with pytest.raises(veil.ValidationError, match=r"at most 100000 steps.*= 4000000000 steps"):
        model_ptr.fit(x, y, max_iter=10**9, batch_size=30, wait=False)
    for huge in (10**30, 2**31):  # beyond what a database integer holds: refused, not a 500
        with pytest.raises(veil.ValidationError, match="max_iter"):
            model_ptr.fit(x, y, max_iter=huge, batch_size=30, wait=False)
        with pytest.raises(veil.ValidationError, match="max_iter"):
            model_ptr.quote(x, y, max_iter=huge, batch_size=30)
    admin.update_node(max_fit_steps=8)
    with pytest.raises(veil.ValidationError, match="at most 8 steps"):
        model_ptr.quote(x, y, max_iter=3, batch_size=30)
    assert model_ptr.progress()["status"] == "idle"


def test_a_fit_the_budget_could_not_publish_is_refused_up_front(setup) -> None:
    node, admin, _, _, _ = setup
    poor = make_ds(admin, node, budget=0.5)
    data = poor.datasets["Patches"]
    model_ptr = _model().compile(to=poor)
    quote = model_ptr.quote(data["train_images"], data["train_labels"], max_iter=5, batch_size=30)
    with pytest.raises(veil.BudgetExceeded) as refused:
        model_ptr.fit(data["train_images"], data["train_labels"], max_iter=5, batch_size=30)
    detail = refused.value.detail
    assert detail["needed"] == pytest.approx(quote["cart_after"]) and detail["remaining"] == 0.5
    assert model_ptr.progress()["status"] == "idle"  # nothing queued
    assert poor.privacy_budget.spent == 0.0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/users",
            {"email": "a@b.cd", "password": "long-enough", "budget": float("nan")},
            "budget",
        ),
        ("/users", {"email": "a@b.cd", "password": "long-enough", "budget": -1.0}, "budget"),
        ("/users/me/budget", {"budget": float("inf")}, "budget"),
        ("/node", {"max_params": 10**30}, "max_params"),
        ("/node", {"max_fit_steps": 0}, "max_fit_steps"),
        ("/node", {"delta": 1e300}, "delta"),
    ],
)
def test_admin_numbers_are_range_checked(setup, path, body, field) -> None:
    node, admin, _, _, _ = setup
    method = "PATCH" if path == "/node" else "PUT" if path.endswith("budget") else "POST"
    answer = _raw(node, admin, method, path, body)
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["message"]


def test_data_scientist_numbers_are_range_checked(setup) -> None:
    node, _, ds, x, y = setup
    model_ptr = _model().compile(to=ds)
    loss, _ = model_ptr.step(x[0:8], y[0:8])
    fit = {"x": x.id, "y": y.id, "batch_size": 10}
    for path, body in [
        (f"/models/{model_ptr.id}/fit", {**fit, "max_iter": -3}),
        (f"/models/{model_ptr.id}/fit", {**fit, "validation_split": float("nan")}),
        (f"/models/{model_ptr.id}/fit", {**fit, "target_epsilon": float("inf")}),
        (f"/models/{model_ptr.id}/quote", {**fit, "batch_size": 10**40}),
        (f"/models/{model_ptr.id}/step", {"x": x.id, "y": y.id, "batch_size": 10**30}),
        (f"/models/{model_ptr.id}/evaluate", {"x": x.id, "y": y.id, "epsilon": float("nan")}),
        (f"/models/{model_ptr.id}/evaluate", {"x": x.id, "y": y.id, "epsilon": 1e300}),
        (f"/objects/{loss.id}/publish", {"sigma": 1e300}),
        (f"/objects/{loss.id}/publish", {"epsilon": float("-inf")}),
        (f"/objects/{loss.id}/publish", {"sigma": 1.0, "clip": 1e300}),
    ]:
        answer = _raw(node, ds, "POST", path, body)
        assert answer.status_code < 500, (path, body, answer.text)
    compiled = ds._http.post("/models/drafts")["id"]
    answer = _raw(
        node, ds, "POST", f"/models/drafts/{compiled}/compile", {"noise_multiplier": 1e300}
    )
    assert answer.status_code == 422
    assert ds.privacy_budget.spent == 0.0


def test_a_body_over_the_limit_is_refused_before_it_is_read(setup) -> None:
    node, _, ds, _, _ = setup
    # The headers announce 37 MB; not a byte of the body follows. The node answers at
    # once: it never waits for, let alone parses, what it would refuse.
    host, port = "127.0.0.1", node.port
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.sendall(
            b"POST /api/v1/models HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + ds._http.token.encode() + b"\r\n"
            b"Content-Length: 37000000\r\n\r\n"
        )
        answer = b""
        while not _complete(answer) and (chunk := raw.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b'"error":"RequestTooLarge"' in answer
    # without a Content-Length (chunked), it stops reading once past the limit
    layers = json.dumps({"spec": {"layers": [{"class_name": "Flatten"}] * 200_000}}).encode()

    def chunks():
        for start in range(0, len(layers), 65536):
            yield layers[start : start + 65536]

    with httpx.Client(base_url=node.url + "/api/v1") as http:
        answer = http.post(
            "/models",
            content=chunks(),
            headers={
                "Authorization": f"Bearer {ds._http.token}",
                "Content-Type": "application/json",
            },
        )
    assert answer.status_code == 413 and answer.json()["error"] == "RequestTooLarge"
    with pytest.raises(veil.RequestTooLarge):
        ds.models.create({"layers": [{"class_name": "Flatten"}] * 200_000})


def test_a_draft_grows_no_larger_than_a_compiled_spec(setup) -> None:
    _, _, ds, _, _ = setup
    draft = ds.models.create_draft()
    draft.add({"class_name": "Flatten", "config": {"input_shape": [None, 4]}})
    for _ in range(MAX_LAYERS - 1):
        draft.add({"class_name": "ReLU", "config": {}})
    with pytest.raises(veil.SpecError, match=f"at most {MAX_LAYERS} layers"):
        draft.add({"class_name": "ReLU", "config": {}})


def test_one_user_never_holds_every_worker_and_queued_jobs_show_their_place(setup) -> None:
    node, admin, alice, x, y = setup  # the node runs two jobs at once; one per user
    bob = make_ds(admin, node, budget=1e6)
    admin.users.set_budget(alice.user.email, 1e6)
    long = {"max_iter": 2000, "batch_size": 4, "wait": False}
    first, second = _model().compile(to=alice), _model().compile(to=alice)
    first.fit(x, y, **long)
    _wait_for(lambda: first.progress()["status"] == "running")
    second.fit(x, y, **long)
    queued = second.progress()
    assert queued["status"] == "queued" and queued["queue_position"] == 1
    theirs = _model().compile(to=bob)
    bobs = bob.datasets["Patches"]
    theirs.fit(bobs["train_images"], bobs["train_labels"], **long)
    _wait_for(lambda: theirs.progress()["status"] == "running")  # bob is not behind alice
    assert second.progress()["status"] == "queued"
    first.cancel()
    _wait_for(lambda: second.progress()["status"] == "running")  # her next one starts
    assert second.progress()["queue_position"] is None
    for model_ptr in (second, theirs):
        model_ptr.cancel()
        model_ptr.wait(show=False)
    assert first.progress()["status"] == "cancelled"


def _complete(answer: bytes) -> bool:
    """Whether an HTTP answer read off a socket holds its whole body."""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return len(body) >= length


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _raw(node, client: veil.Client, method: str, path: str, body) -> httpx.Response:
    """A request with JSON that may hold NaN or infinities (as Python's json writes them)."""
    headers = {"Authorization": f"Bearer {client._http.token}"}
    content = None
    if body is not None:
        content = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    with httpx.Client(base_url=node.url + "/api/v1") as http:
        return http.request(method, path, content=content, headers=headers)
