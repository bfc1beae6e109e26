"""Red team: races on one model (threads, two node processes on one database), the
flow III cart stored as `cart_changes` (full-copy boundary, two sources, restarts,
versions kept whole), and admin inputs that must never answer 500.

The oracle of every race: the cart is a function of what was trained and released
only, so the same successful operations replayed one by one on a fresh model (by a
fresh user, with no restart) leave the same spent epsilon once the weights are
published; and the model counts exactly the steps that answered.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import statistics
import threading
import time

import httpx
import numpy as np
import pytest

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, DS_PASSWORD, login, make_ds
from tests.nodes import fresh_postgres_url, node_process, running_node
from veil import nn
from veil.privacy import Cart

_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _upload(admin: veil.Client, name: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    admin.datasets.upload(name=name, assets={"x": x, "y": y}, bounds={"x": (-10, 10), "y": (0, 1)})


def _model(ds: veil.Client) -> veil.ModelPointer:
    model = nn.Model()
    model.add(nn.Dense(1, activation="sigmoid", input_shape=(None, 4)))
    return model.compile(to=ds)


def _run(client: veil.Client, model_ptr, op: tuple, objects: dict) -> None:  # noqa: ANN001
    """One operation of a race or its replay; `objects` maps step tags to loss pointers."""
    kind, *args = op
    data = {row["name"]: client.datasets[row["name"]] for row in client._http.get("/datasets")}
    if kind == "step":
        tag, name, start, stop = args
        x, y = data[name]["x"], data[name]["y"]
        objects[tag] = model_ptr.step(x[start:stop], y[start:stop])[0]
    elif kind == "object":
        tag, sigma = args
        objects[tag].publish(sigma=sigma)
    elif kind == "evaluate":
        name, start, stop, epsilon = args
        model_ptr.evaluate(
            data[name]["x"][start:stop], data[name]["y"][start:stop], epsilon=epsilon
        )
    elif kind == "weights":
        model_ptr.weights().publish()


def _replay(admin: veil.Client, node, ops: list[tuple]) -> float:  # noqa: ANN001
    """The spent epsilon after `ops`, one by one, on a fresh model of a fresh user."""
    ds = make_ds(admin, node, budget=1e6)
    model_ptr, objects = _model(ds), {}
    for op in ops:
        _run(ds, model_ptr, op, objects)
    model_ptr.weights().publish()
    return ds.privacy_budget.spent


def _run_when_admitted(client, model_ptr, op: tuple, objects: dict) -> None:  # noqa: ANN001
    for _ in range(1000):
        try:
            return _run(client, model_ptr, op, objects)
        except veil.RateLimited:  # the user's other threads hold its compute slots
            time.sleep(0.005)
    raise AssertionError(f"{op} was never admitted")


def _race(
    clients: list[veil.Client], model_id: str, plans: list[list[tuple]]
) -> tuple[list[tuple], dict]:
    """Run each plan on its own client and thread; the operations that succeeded, in
    the order they answered. A Conflict (retry) is the only refusal allowed; an
    operation refused for the user's computations at once (RateLimited) is retried."""
    done: list[tuple] = []
    errors: list[BaseException] = []
    objects: dict = {}
    guard = threading.Lock()

    def worker(client: veil.Client, plan: list[tuple]) -> None:
        model_ptr = client.models.get(model_id)
        for op in plan:
            if op[0] == "object" and op[1] not in objects:
                continue  # its step lost a race
            try:
                _run_when_admitted(client, model_ptr, op, objects)
            except veil.Conflict:
                continue
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return
            with guard:
                done.append(op)

    threads = [
        threading.Thread(target=worker, args=pair) for pair in zip(clients, plans, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return done, objects


def _check_race(admin, node, ds, model_id: str, done: list[tuple]) -> None:  # noqa: ANN001
    model_ptr = ds.models.get(model_id)
    steps = [op for op in done if op[0] == "step"]
    assert model_ptr._info["steps"] == len(steps)  # none counted twice, none lost
    cart = model_ptr.progress()["cart"]
    published = model_ptr.weights().publish()
    assert published.cost == pytest.approx(cart, rel=1e-9, abs=1e-12)
    spent = ds.privacy_budget.spent
    assert spent == pytest.approx(_replay(admin, node, done), rel=1e-6)


def test_threads_stepping_evaluating_and_publishing_one_model_add_up(node) -> None:
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    _upload(admin, "A", 48)
    ds = make_ds(admin, node, budget=1e6)
    model_id = _model(ds).id
    clients = [login(node, ds._http.get("/users/me")["email"], DS_PASSWORD) for _ in range(3)]
    starts = [0, 4, 8, 0, 12, 40, 20, 4, 0, 30]
    plans = [
        [("step", f"a{i}", "A", s, s + 8) for i, s in enumerate(starts)],
        [("step", f"b{i}", "A", s, s + 6) for i, s in enumerate(reversed(starts))],
        [("weights",), ("evaluate", "A", 0, 10, 1.0), ("object", "a1", 5.0), ("weights",)]
        + [("object", "b2", 8.0), ("evaluate", "A", 40, 48, 0.5), ("object", "a6", 4.0)],
    ]
    done, _ = _race(clients, model_id, plans)
    assert sum(op[0] == "step" for op in done) >= 10  # one process: steps queue, none lost
    _check_race(admin, node, ds, model_id, done)


@pytest.mark.parametrize("backend", _BACKENDS)
def test_two_node_processes_stepping_one_model_count_each_step_once(tmp_path, backend) -> None:
    data_dir = tmp_path / "node"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_postgres_url()) if backend == "postgres" else None
        first = stack.enter_context(node_process(data_dir, url, None))
        second = stack.enter_context(node_process(data_dir, url, None))
        admin = veil.login(email=ADMIN_EMAIL, password=ADMIN_PASSWORD, url=first, verbose=False)
        _upload(admin, "A", 40)
        user = admin.users.create(email="two@lab.org", password=DS_PASSWORD, budget=1e6)
        ds = veil.login(email=user.email, password=DS_PASSWORD, url=first, verbose=False)
        other = veil.login(email=user.email, password=DS_PASSWORD, url=second, verbose=False)
        model_id = _model(ds).id
        # Each process loads the model once before the race: a cold load racing two of
        # the other's steps has a test of its own (below).
        warm = [("step", "w0", "A", 0, 4), ("step", "w1", "A", 4, 8)]
        for client, op in zip((ds, other), warm, strict=True):
            _run(client, client.models.get(model_id), op, {})
        plans = [
            [("step", f"a{i}", "A", s, s + 8) for i, s in enumerate([0, 8, 0, 16, 4, 32, 0])]
            + [("object", "a0", 6.0), ("step", "a9", "A", 24, 32)],
            [("step", f"b{i}", "A", s, s + 4) for i, s in enumerate([0, 2, 36, 0, 20, 4, 8])]
            + [("object", "b1", 6.0), ("evaluate", "A", 0, 8, 1.0)],
        ]
        done, objects = _race([ds, other], model_id, plans)
        done = warm + done

        class _Node:  # what `make_ds` needs of a node: its URL
            url = first

        _check_race(admin, _Node, ds, model_id, done)
        # Every answered step's objects exist: each loss publishes (through either node).
        for op in done[2:]:
            if op[0] == "step":
                objects[op[1]].publish(sigma=50.0)
        admin.close()


@pytest.mark.parametrize("backend", _BACKENDS)
def test_a_cold_load_racing_another_nodes_steps_answers_conflict(tmp_path, backend, monkeypatch):
    from veil.server.services import live_models

    data_dir, armed, fired = tmp_path / "node", threading.Event(), threading.Event()
    real = live_models.load_trainer
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_postgres_url()) if backend == "postgres" else None
        one = stack.enter_context(running_node(data_dir, database_url=url))
        two = stack.enter_context(running_node(data_dir, database_url=url))
        admin = login(one, ADMIN_EMAIL, ADMIN_PASSWORD)
        _upload(admin, "A", 16)
        user = admin.users.create(email="cold@lab.org", password=DS_PASSWORD, budget=1e6)
        ds, other = login(one, user.email, DS_PASSWORD), login(two, user.email, DS_PASSWORD)
        model_id = _model(ds).id
        one.ctx.live.take(model_id, -1)  # forget the new model: node one loads it cold

        def load_while_the_other_steps(session, files, model, **kwargs):  # noqa: ANN001, ANN003, ANN202
            if armed.is_set() and not fired.is_set():
                fired.set()  # node two steps twice while node one loads version 1
                for op in (("step", "o0", "A", 0, 8), ("step", "o1", "A", 8, 16)):
                    _run(other, other.models.get(model_id), op, {})
                deadline = time.monotonic() + 5  # its pruner runs in the background
                while files.optimizer(model.id, model.version).exists():
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            return real(session, files, model, **kwargs)

        monkeypatch.setattr(live_models, "load_trainer", load_while_the_other_steps)
        armed.set()
        model_ptr = ds.models.get(model_id)
        x, y = ds.datasets["A"]["x"], ds.datasets["A"]["y"]
        with contextlib.suppress(veil.Conflict):  # what steps.py promises: retry
            model_ptr.step(x[0:4], y[0:4])
        assert fired.is_set()


def _ops_with_two_sources() -> list[tuple]:
    """Overlapping steps on A (40 rows) and B (24 rows): 64 rows, so a full row after
    16 changed; a published object and an evaluate keep versions whole between them."""
    return [
        ("step", "s0", "A", 0, 8),
        ("step", "s1", "B", 0, 8),
        ("step", "s2", "A", 4, 12),
        ("step", "s3", "A", 0, 8),
        "restart",
        ("step", "s4", "B", 8, 16),
        ("object", "s4", 5.0),
        ("step", "s5", "A", 30, 38),
        ("evaluate", "B", 0, 4, 0.5),
        ("step", "s6", "A", 0, 8),
        "restart",
        ("step", "s7", "B", 16, 24),
        ("step", "s8", "A", 32, 40),
        ("step", "s9", "B", 4, 12),
        ("step", "s10", "A", 0, 3),
    ]


@pytest.mark.parametrize("backend", _BACKENDS)
def test_a_cart_chain_over_sources_restarts_and_whole_versions_prices_as_a_replay(
    tmp_path, backend
) -> None:
    data_dir = tmp_path / "node"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_postgres_url()) if backend == "postgres" else None
        carts, objects = [], {}
        node = stack.enter_context(contextlib.ExitStack())
        running = node.enter_context(running_node(data_dir, database_url=url))
        admin = login(running, ADMIN_EMAIL, ADMIN_PASSWORD)
        _upload(admin, "A", 40)
        _upload(admin, "B", 24, seed=1)
        user = admin.users.create(email="chain@lab.org", password=DS_PASSWORD, budget=1e6)
        ds = login(running, user.email, DS_PASSWORD)
        model_id = _model(ds).id
        for op in _ops_with_two_sources():
            if op == "restart":  # the model reloads its cart from the chain
                node.close()
                running = node.enter_context(running_node(data_dir, database_url=url))
                ds = login(running, user.email, DS_PASSWORD)
                continue
            model_ptr = ds.models.get(model_id)
            _run(ds, model_ptr, op, objects)
            carts.append(model_ptr.progress()["cart"])
        cost = ds.models.get(model_id).weights().publish().cost
        spent = ds.privacy_budget.spent

        # The same operations on a fresh model of a fresh user, with no restart.
        admin = login(running, ADMIN_EMAIL, ADMIN_PASSWORD)
        fresh = make_ds(admin, running, budget=1e6)
        replay, objects = _model(fresh), {}
        replayed = []
        for op in _ops_with_two_sources():
            if op != "restart":
                _run(fresh, replay, op, objects)
                replayed.append(replay.progress()["cart"])
        assert carts == pytest.approx(replayed, rel=1e-9, abs=1e-12)
        assert replay.weights().publish().cost == pytest.approx(cost, rel=1e-9, abs=1e-12)
        assert fresh.privacy_budget.spent == pytest.approx(spent, rel=1e-9)
        node.close()


def test_steps_racing_a_fit_and_its_cancel_charge_what_trained(sqlite_node) -> None:
    node = sqlite_node
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    _upload(admin, "A", 64)
    ds = make_ds(admin, node, budget=1e6)
    model_ptr = _model(ds)
    x, y = ds.datasets["A"]["x"], ds.datasets["A"]["y"]
    stepped, refused = [], []

    def stepper() -> None:
        for start in (0, 8, 0, 16, 24, 0, 8, 40):
            try:
                model_ptr.step(x[start : start + 8], y[start : start + 8])
                stepped.append(start)
            except veil.Conflict:
                refused.append(start)
            time.sleep(0.02)

    thread = threading.Thread(target=stepper)
    thread.start()
    for _ in range(50):  # priced on a version a step may move on: retry until queued
        try:
            model_ptr.fit(x, y, max_iter=3, batch_size=16, wait=False)
            break
        except veil.Conflict:
            time.sleep(0.01)
    time.sleep(0.05)
    with contextlib.suppress(veil.NotFound):
        model_ptr.cancel()
    thread.join(timeout=60)
    deadline = time.monotonic() + 30
    while model_ptr.progress()["status"] in ("queued", "running") and time.monotonic() < deadline:
        model_ptr.progress(wait=1)
    fit_steps = model_ptr.refresh()._info["steps"] - len(stepped)
    assert fit_steps >= 0
    # The cart, computed independently: the fit's Poisson steps, then each chosen batch.
    cart = Cart()
    key = ds.datasets["A"].id
    cart.ensure_source(key, 64)
    if fit_steps:
        cart.mark_pool(key, np.arange(64))
        cart.add_sampled(key, q=16 / 64, sigma=1.0, steps=fit_steps)
    for start in stepped:
        cart.add_gaussian_rows(key, np.arange(start, start + 8), sigma=1.0)
    delta = ds._http.get("/node")["delta"]
    published = model_ptr.weights().publish()
    assert published.cost == pytest.approx(cart.epsilon(delta), rel=1e-6)


# Admin inputs ------------------------------------------------------------------------


def _raw_upload(raw: httpx.Client, name: str, decl: dict, data: bytes) -> httpx.Response:
    answer = raw.post("/datasets/uploads", json={"name": name, "assets": [decl]})
    if answer.status_code != 201:
        return answer
    upload = answer.json()["id"]
    digest = hashlib.sha256(data).hexdigest()
    answer = raw.put(
        f"/datasets/uploads/{upload}/x/data", content=data, headers={"X-Veil-SHA256": digest}
    )
    if answer.status_code != 200:
        return answer
    return raw.post(f"/datasets/uploads/{upload}/commit")


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _header(text: bytes, tail: bytes = b"") -> bytes:
    return b"\x93NUMPY\x01\x00" + (len(text) + 1).to_bytes(2, "little") + text + b"\n" + tail


def _admin_raw(node) -> httpx.Client:  # noqa: ANN001
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    headers = {"Authorization": f"Bearer {admin._http.token}"}
    return httpx.Client(base_url=node.url + "/api/v1", headers=headers, timeout=60)


def test_odd_uploads_users_and_node_settings_are_refused_plainly(sqlite_node) -> None:
    raw = _admin_raw(sqlite_node)
    f4 = {"name": "x", "dtype": "<f4", "shape": [4, 2], "bounds": [-1, 1]}
    head = b"{'descr': '<f4', 'fortran_order': False, 'shape': "
    uploads = [
        (f4, _npy(np.full((4, 2), np.nan, np.float32))),
        (f4, _npy(np.zeros((2, 4), np.float32))),
        (f4, _npy(np.zeros((4, 2), np.float32))[:-3]),
        (f4, _header(b"{'descr': '|O', 'fortran_order': False, 'shape': (4, 2), }")),
        (f4, _header(b"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4, 2)}")),
        (f4, _header(b"{'descr': '<f4', 'fortran_order': 1, 'shape': (4, 2)}", b"\0" * 32)),
        (f4, _header(head + b"(4, -2), }")),
        (f4, _header(head + b"(4, 2), 'e': f()}")),
        (f4, _header(head + b"(4, " + b"9" * 5000 + b")}")),
        ({**f4, "shape": [2**62, 2**62]}, b""),
        ({**f4, "shape": [4, 2**70]}, b""),
        ({**f4, "bounds": [1, -1]}, b""),
        ({**f4, "bounds": [[-1, 0, 1], 1]}, b""),
        ({**f4, "dtype": "<U4"}, b""),
        ({**f4, "dtype": "O"}, b""),
        ({**f4, "dtype": "|b1", "bounds": [0.5, 0.6]}, b""),
    ]
    for index, (decl, data) in enumerate(uploads):
        answer = _raw_upload(raw, f"Odd{index}", decl, data)
        assert 400 <= answer.status_code < 500, (index, answer.text[:200])
    two = [f4, {**f4, "name": "y", "shape": [5]}]
    assert raw.post("/datasets/uploads", json={"name": "Rows", "assets": two}).status_code == 422
    user, edge = {"email": "edge@lab.org", "password": "password-123"}, "/users/edge@lab.org"
    json_headers = {"content-type": "application/json"}
    for budget in ("Infinity", "NaN", "1e400", "-1", '"5"', "true"):
        body = f'{{"email": "e@lab.org", "password": "password-123", "budget": {budget}}}'
        assert raw.post("/users", content=body, headers=json_headers).status_code == 422
        body = f'{{"budget": {budget}}}'
        assert raw.put(edge + "/budget", content=body, headers=json_headers).status_code == 422
    assert raw.post("/users", json={**user, "budget": 1e308}).status_code == 201
    upper = {**user, "email": "EDGE@lab.org", "budget": 1}
    assert raw.post("/users", json=upper).status_code == 409
    assert raw.post("/users/nobody@lab.org/disable").status_code == 404
    for _ in range(2):
        assert raw.post(edge + "/disable").status_code == 200
    bad_settings = ["5e-324", "1", "NaN", "Infinity", "-1"]
    bodies = [f'{{"delta": {value}}}' for value in bad_settings]
    bodies += ['{"max_params": 1.5}', '{"max_params": 9223372036854775808}']
    bodies += ['{"max_running_jobs": 0}', '{"name": "x"}']
    for body in bodies:
        assert raw.patch("/node", content=body, headers=json_headers).status_code == 422, body


def test_bounds_at_the_edge_of_a_dtypes_range_commit_or_are_refused_plainly(sqlite_node) -> None:
    raw, x = _admin_raw(sqlite_node), np.zeros((4, 2))
    cases = [
        ("<i8", [0, 2**63 - 1], x.astype("<i8")),
        ("<u8", [0, 2**64 - 1], x.astype("<u8")),
        ("<f8", [-1.7976931348623157e308, 1.7976931348623157e308], x),
    ]
    for index, (dtype, bounds, data) in enumerate(cases):
        decl = {"name": "x", "dtype": dtype, "shape": [4, 2], "bounds": bounds}
        answer = _raw_upload(raw, f"Edge{index}", decl, _npy(data))
        assert answer.status_code < 500, (dtype, answer.text[:200])


def test_login_answers_unknown_emails_and_wrong_passwords_alike(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    known = [f"known{i}@lab.org" for i in range(6)]
    for email in known:
        admin.users.create(email=email, password=DS_PASSWORD, budget=1)
    admin.users.disable(known[0])
    url = sqlite_node.url + "/api/v1/auth/login"
    answers: dict[str, list] = {"known": [], "unknown": []}
    times: dict[str, list[float]] = {"known": [], "unknown": []}
    with httpx.Client(timeout=30) as http:
        for index in range(6):  # one try per account: under the throttle
            for kind, email in (("known", known[index]), ("unknown", f"ghost{index}@lab.org")):
                started = time.perf_counter()
                answer = http.post(url, json={"email": email, "password": "wrong-password-1"})
                times[kind].append(time.perf_counter() - started)
                answers[kind].append((answer.status_code, answer.json()["message"]))
        # A disabled account with its right password answers like a wrong one.
        disabled = http.post(url, json={"email": known[0], "password": DS_PASSWORD})
    assert set(answers["known"]) == set(answers["unknown"]) == {answers["known"][0]}
    assert answers["known"][0][0] == 401
    assert (disabled.status_code, disabled.json()["message"]) == answers["known"][0]
    ratio = statistics.median(times["known"]) / statistics.median(times["unknown"])
    assert 0.5 < ratio < 2.0, times
