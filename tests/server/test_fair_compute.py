"""Steps and evaluations share the node's compute threads fairly and are bounded.

A red-team helper compiled eight models within the node's limits (Dense(800,000) and
253 ReLUs: 813 MB of outputs per row) and sent eight steps at once: another user's step
waited 28 s instead of 15 ms, and the node took 11 GB. Now one user computes at most
`max_user_computations` (2) steps or evaluations at once, more are refused at once
(429) without holding a thread, a step's work (rows x FLOPs per row) is bounded, and a
model may hold at most 2^24 values per row over all its layers (tests/nn/test_spec.py).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.server.rows import logistic, upload_rows
from veil import nn
from veil.nn.layers import layer_to_dict
from veil.server.services import steps


@pytest.fixture
def users(sqlite_node):
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_rows(admin, 64)
    return sqlite_node, make_ds(admin, sqlite_node), make_ds(admin, sqlite_node)


def _held_compute(node, monkeypatch):  # noqa: ANN001, ANN202
    """Make every computation wait for `gate`; `entered` counts those waiting."""
    gate, entered = threading.Event(), threading.Semaphore(0)
    original = node.ctx.compute.run

    def held(fn):  # noqa: ANN001, ANN202
        entered.release()
        assert gate.wait(60), "the test never opened the gate"
        return original(fn)

    monkeypatch.setattr(node.ctx.compute, "run", held)
    return gate, entered


def test_a_user_computes_at_most_two_requests_at_once_and_others_still_compute(
    users, monkeypatch
) -> None:
    node, greedy, other = users
    x, y = greedy.datasets["Rows"]["x"], greedy.datasets["Rows"]["y"]
    models = [logistic().compile(to=greedy) for _ in range(3)]
    theirs = logistic().compile(to=other)
    gate, entered = _held_compute(node, monkeypatch)
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(m.step, x[0:8], y[0:8]) for m in models[:2]]
        for _ in running:
            assert entered.acquire(timeout=30)
        with pytest.raises(veil.RateLimited, match="at most 2 requests of one user") as refused:
            models[2].step(x[0:8], y[0:8])
        assert refused.value.detail == {"limit": 2, "running": 2}
        with pytest.raises(veil.RateLimited):  # an evaluation takes a slot too
            models[2].evaluate(x[0:8], y[0:8], epsilon=0.5)
        with pytest.raises(veil.RateLimited):  # so do statistics, which read every row
            x.statistics(epsilon=0.5)
        with pytest.raises(veil.RateLimited):  # and a fit's quote, which calibrates
            models[2].quote(x, y, max_iter=1, batch_size=8)
        others = pool.submit(theirs.step, other.datasets["Rows"]["x"][0:8], y[0:8])
        assert entered.acquire(timeout=30)  # the other user computes meanwhile
        gate.set()
        for future in [*running, others]:
            future.result(timeout=60)
    assert [m.refresh()._info["steps"] for m in models] == [1, 1, 0]
    assert greedy.privacy_budget.spent == 0.0  # the refused evaluation charged nothing
    models[2].step(x[0:8], y[0:8])  # slots are given back when requests answer
    assert node.ctx.compute._admitted == {}


def test_a_refused_request_holds_no_thread_while_the_users_others_compute(
    users, monkeypatch
) -> None:
    """Forty more steps than the user may run, at once, on one model: each is refused
    at once instead of waiting on the model's lock in one of the API's worker threads,
    and a login still answers."""
    node, greedy, _ = users
    x, y = greedy.datasets["Rows"]["x"], greedy.datasets["Rows"]["y"]
    model_ptr = logistic().compile(to=greedy)
    gate, entered = _held_compute(node, monkeypatch)
    with ThreadPoolExecutor(44) as pool:
        first = pool.submit(model_ptr.step, x[0:8], y[0:8])
        assert entered.acquire(timeout=30)
        second = pool.submit(model_ptr.step, x[8:16], y[8:16])  # waits on the model's lock
        deadline = time.monotonic() + 30
        while sum(node.ctx.compute._admitted.values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # until it holds the user's second slot
        burst = [pool.submit(model_ptr.step, x[0:8], y[0:8]) for _ in range(40)]
        outcomes = [f.exception(timeout=60) for f in burst]
        assert all(isinstance(e, veil.RateLimited) for e in outcomes), outcomes
        login(node, ADMIN_EMAIL, ADMIN_PASSWORD).close()
        gate.set()
        first.result(timeout=60)
        second.result(timeout=60)
    assert model_ptr.refresh()._info["steps"] == 2


def test_steps_and_evaluations_beyond_their_work_are_refused_before_computing(
    users, monkeypatch
) -> None:
    _, ds, _ = users
    x, y = ds.datasets["Rows"]["x"], ds.datasets["Rows"]["y"]
    model_ptr = logistic().compile(to=ds)
    flops = nn.ModelSpec.from_dict(model_ptr._info["spec"]).flops_per_example
    monkeypatch.setattr(steps, "MAX_STEP_FLOPS", 10 * flops)
    monkeypatch.setattr(steps, "MAX_EVALUATE_FLOPS", 20 * flops)
    with pytest.raises(veil.ValidationError, match=r"A step .* use at most 10 rows") as step:
        model_ptr.step(x[0:11], y[0:11])
    with pytest.raises(veil.ValidationError, match=r"An evaluation .* at most 20 rows") as ev:
        model_ptr.evaluate(x[0:21], y[0:21], epsilon=0.5)
    assert step.value.detail == {"most_rows": 10} and ev.value.detail == {"most_rows": 20}
    info = model_ptr.refresh()._info
    assert info["steps"] == 0 and info["version"] == 1 and ds.privacy_budget.spent == 0.0
    model_ptr.step(x[0:10], y[0:10])
    assert ds.usage["max_objects"].used == 2  # the refused step kept no object
    assert model_ptr.evaluate(x[0:20], y[0:20], epsilon=0.5)["cost"] > 0


def test_a_model_holding_too_much_per_row_is_refused_by_the_node(users) -> None:
    """The client refuses it before sending; the node refuses it from a raw request."""
    node, ds, _ = users
    spec = nn.ModelSpec.build(
        (None, 4), [nn.Dense(1, input_shape=(None, 4))], noise_multiplier=1.0
    ).to_dict()
    wide = [nn.Dense(800_000, input_shape=(None, 4))] + [nn.ReLU() for _ in range(253)]
    spec["layers"] = [layer_to_dict(layer) for layer in [*wide, nn.Dense(1)]]
    answer = httpx.post(
        f"{node.url}/api/v1/models",
        json={"spec": spec},
        headers={"Authorization": f"Bearer {ds._http.token}"},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"]["max_values"] == 1 << 24
    assert ds.models.list() == []
