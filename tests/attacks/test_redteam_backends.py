"""Red team, round eight: the production configuration. A node on PostgreSQL whose fits
run in `veil worker` processes (Celery over Redis), attacked by a data scientist with the
public client or raw HTTP and its token: bodies PostgreSQL cannot store, publishes racing
the budget on PostgreSQL's row locks, a worker killed mid-fit, a fit cancelled and queued
again, private values that would break a fit in the worker, another user's jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest

import veil
from tests.attacks.scenario import PUBLIC_PROGRESS, raw_client
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, DS_PASSWORD, login, make_ds
from tests.nodes import RunningNode, fresh_postgres_url, running_node
from tests.web.scenario import csrf_of, dashboard, wait_for
from veil import nn
from veil.privacy import poisson_gaussian
from veil.server.db.tables.models import JobEpochRow, JobRow

pytestmark = pytest.mark.postgres

REDIS_URL = "redis://127.0.0.1:6379/12"
LEASE_S = 3.0  # a killed worker's job is requeued this long after its last renewal
ROWS = 48
_ENDED = ("done", "failed", "cancelled")


def _table(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "x": rng.uniform(0, 1, (ROWS, 4)).astype(np.float32),
        "y": rng.integers(0, 2, ROWS).astype(np.int64),
    }


def _logistic(client: veil.Client, *, noise: float = 1.0):  # noqa: ANN202 - a ModelPointer
    model = nn.Model()
    model.add(nn.Dense(1, input_shape=(None, 4)))
    model.add(nn.Sigmoid())
    return model.compile(
        to=client, loss=nn.BinaryCrossEntropy(), optimizer=nn.SGD(lr=0.1), noise_multiplier=noise
    )


def _until_ended(model_ptr, timeout: float = 120) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    state = model_ptr.progress(wait=5)
    while state["status"] not in _ENDED:
        assert time.monotonic() < deadline, state
        state = model_ptr.progress(wait=5)
    return state


# PostgreSQL: what it refuses to store, and its row locks -----------------------------


@pytest.fixture(scope="module")
def pg_node(tmp_path_factory):
    """One PostgreSQL node with the table dataset, for attacks that need no worker."""
    with running_node(tmp_path_factory.mktemp("backends-pg") / "node", backend="postgres") as node:
        admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
        admin.datasets.upload(
            name="Table", assets=_table(np.random.default_rng(0)), bounds={"x": (0, 1), "y": (0, 1)}
        )
        yield node, admin
        admin.close()


# Values SQLite stores and PostgreSQL does not (or that no column holds): lone and
# reversed surrogates, NUL, numbers past float64 and int64, a 70k-character text, deep
# nesting. Each goes where a body takes free-form JSON (a layer, a loss, an optimizer, a
# spec) or a typed field.
_ODD = [
    '"\\ud800"',
    '"\\udc00\\ud800"',
    '"\\u0000"',
    '{"\\u0000": 1}',
    '{"\\ud800": [1]}',
    '"' + "\u00e9" * 70_000 + '"',
    "1e309",
    "-1e309",
    str(2**63),
    str(-(2**63) - 1),
    str(2**64),
    "1e-320",
    "[" * 300 + "]" * 300,
]


def _with(base: dict, path: tuple, value: str) -> str:
    """`base` as JSON, with the raw JSON `value` at `path` (a new key where it ends)."""
    body = json.loads(json.dumps(base))
    place = body
    for key in path[:-1]:
        place = place[key]
    place[path[-1]] = "\x01HOLE\x01"
    return json.dumps(body).replace('"\\u0001HOLE\\u0001"', value)


def test_json_postgresql_cannot_store_is_refused_plainly_everywhere(pg_node) -> None:
    """Every free-form and typed field of the bodies a data scientist sends, holding
    each value PostgreSQL refuses (or no column holds): a 4xx, never a 500, and nothing
    spent."""
    node, admin = pg_node
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Table"]
    x, y = data["x"].id, data["y"].id
    model_ptr = _logistic(ds)
    loss_ptr, _ = model_ptr.step(data["x"][0:4], data["y"][0:4])
    raw = raw_client(node, ds)
    spec = raw.get(f"/models/{model_ptr.id}").json()["spec"]
    dense = spec["layers"][0]
    draft = raw.post("/models/drafts").json()["id"]
    assert raw.post(f"/models/drafts/{draft}/layers", json={"layer": dense}).status_code == 200
    compile_body = {"loss": spec["loss"], "optimizer": spec["optimizer"], "noise_multiplier": 1.0}
    fit_body = {"x": x, "y": y, "max_iter": 1, "batch_size": 4}
    places = [
        ("/models", {"spec": spec}, ("spec", "layers", 0, "config", "units")),
        ("/models", {"spec": spec}, ("spec", "layers", 0, "config", "odd")),
        ("/models", {"spec": spec}, ("spec", "layers", 1, "class_name")),
        ("/models", {"spec": spec}, ("spec", "optimizer", "config", "lr")),
        ("/models", {"spec": spec}, ("spec", "loss", "config")),
        ("/models", {"spec": spec}, ("spec", "input_shape", 1)),
        ("/models", {"spec": spec}, ("spec", "loss_bound")),
        (f"/models/drafts/{draft}/layers", {"layer": dense}, ("layer", "config", "units")),
        (f"/models/drafts/{draft}/layers", {"layer": dense}, ("layer", "config", "input_shape")),
        (f"/models/drafts/{draft}/layers", {"layer": dense}, ("layer", "class_name")),
        (f"/models/drafts/{draft}/compile", compile_body, ("optimizer", "config")),
        (f"/models/drafts/{draft}/compile", compile_body, ("loss", "class_name")),
        (f"/models/drafts/{draft}/compile", compile_body, ("max_grad_norm",)),
        (f"/models/{model_ptr.id}/fit", fit_body, ("batch_size",)),
        (f"/models/{model_ptr.id}/fit", fit_body, ("max_iter",)),
        (f"/models/{model_ptr.id}/fit", fit_body, ("rows_per_subject",)),
        (f"/models/{model_ptr.id}/quote", fit_body, ("x",)),
        (f"/models/{model_ptr.id}/step", {"x": x, "y": y}, ("y_rows",)),
        (f"/models/{model_ptr.id}/evaluate", {"x": x, "y": y, "epsilon": 1.0}, ("epsilon",)),
        (f"/objects/{loss_ptr.id}/publish", {"sigma": 2.0}, ("clip",)),
        (f"/assets/{x}/statistics", {"epsilon": 1.0}, ("epsilon",)),
        ("/auth/password", {"old_password": DS_PASSWORD}, ("new_password",)),
    ]
    answers = []
    for path, base, where in places:
        for value in _ODD:
            body = _with(base, where, value).encode("utf-8", "surrogatepass")
            answer = raw.post(path, content=body, headers={"content-type": "application/json"})
            answers.append((answer.status_code, path, where, value[:20], answer.text[:160]))
    assert [a for a in answers if a[0] >= 500] == []
    assert all(400 <= a[0] < 500 for a in answers), [a for a in answers if a[0] < 400]
    assert ds.privacy_budget.spent == 0.0
    assert model_ptr.progress()["status"] == "idle"  # no fit was queued by any of them
    ds.close()


def test_weights_publishes_racing_on_postgresql_spend_within_the_budget(pg_node) -> None:
    """Six models with equal carts published at once, each by its own connection, by a
    user whose budget pays for two: exactly two are released, at the figures of two
    publishes in a row, and the ledger adds up."""
    node, admin = pg_node
    probe = make_ds(admin, node, budget=1e6)
    spent = []
    for model_ptr in _stepped_models(probe, 3):
        model_ptr.weights().publish()
        spent.append(probe.privacy_budget.spent)
    probe.close()
    assert 0 < spent[0] < spent[1] < spent[2]
    attacker = make_ds(admin, node, budget=(spent[1] + spent[2]) / 2)
    models = _stepped_models(attacker, 6)
    clients = [login(node, attacker.user.email, DS_PASSWORD) for _ in models]

    def publish(pair) -> str:  # noqa: ANN001
        client, model_ptr = pair
        try:
            client.models.get(model_ptr.id).weights().publish()
            return "released"
        except veil.BudgetExceeded:
            return "refused"

    with ThreadPoolExecutor(len(models)) as pool:
        outcomes = list(pool.map(publish, zip(clients, models, strict=True)))
    assert outcomes.count("released") == 2, outcomes
    budget = attacker.privacy_budget
    assert budget.spent == pytest.approx(spent[1], rel=1e-9)
    assert budget.spent <= budget.total
    releases = sorted(attacker.releases, key=lambda r: r.spent_after)
    assert [r.spent_after for r in releases] == pytest.approx(spent[:2], rel=1e-9)
    for client in (*clients, attacker):
        client.close()


def _stepped_models(client: veil.Client, count: int) -> list:
    """`count` models, each stepped once on the same rows: equal carts."""
    data = client.datasets["Table"]
    models = [_logistic(client, noise=2.0) for _ in range(count)]
    for model_ptr in models:
        model_ptr.step(data["x"][0:8], data["y"][0:8])
    return models


# Celery workers ----------------------------------------------------------------------


@dataclass
class CeleryWorld:
    """A PostgreSQL node with the Celery backend, and the `veil worker` it shares its
    database and data directory with (started and killed by the tests)."""

    node: RunningNode
    admin: veil.Client
    env: dict[str, str]
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self) -> subprocess.Popen:
        worker = subprocess.Popen(
            [sys.executable, "-m", "veil.cli", "worker"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.workers.append(worker)
        return worker

    def kill(self, worker: subprocess.Popen) -> None:
        """As a lost machine would: no warm shutdown, no checkpoint, no goodbye."""
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.kill(worker)


@pytest.fixture(scope="module")
def celery(tmp_path_factory):
    redis = pytest.importorskip("redis")
    redis.Redis.from_url(REDIS_URL).flushdb()
    data_dir = tmp_path_factory.mktemp("backends-celery") / "shared"
    settings = {"job_lease_seconds": LEASE_S, "checkpoint_every_seconds": 0.2}
    with (
        fresh_postgres_url() as database_url,
        running_node(
            data_dir,
            database_url=database_url,
            job_backend="celery",
            redis_url=REDIS_URL,
            **settings,
        ) as node,
    ):
        admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
        rng = np.random.default_rng(1)
        admin.datasets.upload(name="Table", assets=_table(rng), bounds={"x": (0, 1), "y": (0, 1)})
        # The same public facts twice (rows, shapes, dtypes, one mock, no bounds):
        # tame values, and values that break a naive fit (overflows, labels 7).
        tame = _table(rng)
        wild = {"x": tame["x"].copy(), "y": np.full(ROWS, 7, np.int64)}
        wild["x"][::2] = 3e38  # an overflow to inf, then NaN, in the first layer
        wild["x"][1::4] = -1e30
        mock = {"x": np.zeros((4, 4), np.float32), "y": np.zeros(4, np.int64)}
        for name, assets in (("Tame", tame), ("Wild", wild)):
            admin.datasets.upload(name=name, assets=assets, mock=mock)
        env = {
            **os.environ,
            "VEIL_DATA_DIR": str(data_dir),
            "VEIL_DATABASE_URL": database_url,
            "VEIL_REDIS_URL": REDIS_URL,
            "VEIL_JOB_LEASE_SECONDS": str(LEASE_S),
            "VEIL_CHECKPOINT_EVERY_SECONDS": "0.2",
        }
        world = CeleryWorld(node=node, admin=admin, env=env)
        world.start_worker()
        try:
            yield world
        finally:
            world.stop_all()
            admin.close()


def test_a_killed_worker_neither_loses_nor_double_counts_steps(celery) -> None:
    """A worker SIGKILLed mid-fit: the model stays busy (no step, no second fit), its
    weights as checkpointed may be published at their cart, the job resumes on another
    worker once its lease expires, and in the end the model holds exactly the planned
    steps and the two publishes cost what one uninterrupted fit costs."""
    node, admin = celery.node, celery.admin
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Table"]
    model_ptr = _logistic(ds)
    plan = {"max_iter": 12, "batch_size": 1}
    quote = model_ptr.quote(data["x"], data["y"], **plan)
    model_ptr.fit(data["x"], data["y"], wait=False, **plan)
    (worker,) = [w for w in celery.workers if w.poll() is None]
    wait_for(
        lambda: (
            model_ptr.progress()["status"] == "running" and model_ptr.progress()["total_steps"] > 0
        ),
        timeout=60,
        every=0.05,
    )
    celery.kill(worker)
    killed = model_ptr.progress()
    assert killed["status"] == "running" and 0 < killed["total_steps"] < quote["steps"]
    with pytest.raises(veil.Conflict):
        model_ptr.step(data["x"][0:4], data["y"][0:4])
    with pytest.raises(veil.Conflict):
        model_ptr.fit(data["x"], data["y"], wait=False, **plan)
    mid = model_ptr.weights().publish()
    assert mid.cost == pytest.approx(killed["cart"], rel=1e-6)
    celery.start_worker()
    final = _until_ended(model_ptr)
    assert final["status"] == "done" and final["error"] is None, final
    assert final["restarts"] >= 1
    assert final["total_steps"] == final["step"] == quote["steps"]
    model_ptr.weights().publish()
    assert ds.privacy_budget.spent == pytest.approx(quote["cart_after"], rel=1e-6)
    ds.close()


def test_wild_private_values_change_nothing_a_celery_fit_shows(celery) -> None:
    """Features that overflow float32, labels outside the loss's range: the worker trains on
    them as on tame rows, and the data scientist sees the same job end the same way,
    with no error text and only public fields and released metrics."""
    node, admin = celery.node, celery.admin
    ds = make_ds(admin, node, budget=1e6)
    seen = set()
    for name in ("Tame", "Wild"):
        data = ds.datasets[name]
        model_ptr = _logistic(ds)
        model_ptr.fit(
            data["x"], data["y"], max_iter=2, batch_size=8, validation_split=0.25, wait=False
        )
        final = _until_ended(model_ptr)
        assert set(final) <= PUBLIC_PROGRESS, set(final) - PUBLIC_PROGRESS
        assert all(
            set(m) <= {"epoch", "released", "release_id", "withheld"} or m["released"]
            for m in final["metrics"]
        )
        assert all(np.isfinite(m["val_loss"]) for m in final["metrics"]), final["metrics"]
        metric_keys = tuple(tuple(sorted(m)) for m in final["metrics"])
        seen.add(
            (
                final["status"],
                final["error"],
                final["step"],
                final["steps"],
                final["expected_samples"],
                final["total_steps"],
                round(final["cart"], 12),
                metric_keys,
            )
        )
    assert len(seen) == 1 and next(iter(seen))[0] == "done", seen
    ds.close()


def test_a_celery_fit_cancelled_and_queued_again_charges_every_step_once(celery) -> None:
    """Cancelled while running in the worker, the model stays busy until the worker has
    stopped and recorded it; a second fit then adds its steps to the first's, and the
    publish charges exactly the Poisson steps both trained. Meanwhile another data
    scientist holding the model's and the job's ids can neither watch, cancel nor use
    them (API and dashboard)."""
    node, admin = celery.node, celery.admin
    ds = make_ds(admin, node, budget=1e6)
    attacker = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Table"]
    model_ptr = _logistic(ds)
    model_ptr.fit(data["x"], data["y"], max_iter=400, batch_size=1, wait=False)
    wait_for(lambda: model_ptr.progress()["step"] > 0, timeout=60, every=0.05)
    job_id = model_ptr.progress()["job_id"]

    theirs = raw_client(node, attacker)
    x, y = attacker.datasets["Table"]["x"].id, attacker.datasets["Table"]["y"].id
    for method, path, body in [
        ("GET", f"/models/{model_ptr.id}/progress?wait=1", None),
        ("POST", f"/models/{model_ptr.id}/cancel", None),
        ("POST", f"/models/{model_ptr.id}/fit", {"x": x, "y": y, "max_iter": 1}),
        ("POST", f"/models/{model_ptr.id}/weights/publish", None),
        ("GET", f"/models/{model_ptr.id}", None),
    ]:
        assert theirs.request(method, path, json=body).status_code == 404, path
    page = dashboard(node, attacker.user.email, DS_PASSWORD)
    page.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf_of(page)})
    theirs.close()
    state = model_ptr.progress()
    assert state["status"] == "running" and state["job_id"] == job_id, state

    model_ptr.cancel()
    trained_first = None
    try:  # queued again at once: refused while the worker still holds the model
        model_ptr.fit(data["x"], data["y"], max_iter=1, batch_size=4, wait=False)
    except veil.Conflict:
        first = _until_ended(model_ptr)
        assert first["job_id"] == job_id, first
        assert first["status"] == "cancelled" and first["error"] is None, first
        trained_first = first["step"]
        assert first["total_steps"] == trained_first
        model_ptr.fit(data["x"], data["y"], max_iter=1, batch_size=4, wait=False)
    second = _until_ended(model_ptr)
    assert second["job_id"] != job_id and second["status"] == "done", second
    trained_first = trained_first or second["total_steps"] - second["steps"]
    assert 0 < trained_first < 400 * ROWS
    assert second["total_steps"] == trained_first + second["steps"]
    published = model_ptr.weights().publish()
    delta = ds.node["delta"]
    curve = poisson_gaussian(1 / ROWS, 1.0, trained_first) + poisson_gaussian(
        4 / ROWS, 1.0, second["steps"]
    )
    assert published.cost == pytest.approx(curve.epsilon(delta), rel=1e-6)
    ds.close()
    attacker.close()


# Defects ---------------------------------------------------------------------------


def test_a_long_fit_of_large_batches_records_its_expected_samples_on_postgresql(pg_node) -> None:
    """A fit's progress counts its expected samples (step x batch size): 65,536 steps of
    the 32,768-row batches DP-SGD favours pass 2^31, which PostgreSQL's INTEGER refused
    (SQLite stored it), so the worker's write failed and the job with it, hours in.
    Written here as the worker writes it, at the end of the fit, then read back."""
    node, admin = pg_node
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Table"]
    model_ptr = _logistic(ds)
    model_ptr.fit(data["x"], data["y"], max_iter=1, batch_size=ROWS)
    job_id = model_ptr.progress()["job_id"]
    samples = 65_536 * 32_768
    with node.ctx.db.write_session() as session:
        job = session.get(JobRow, job_id)
        job.expected_samples = samples
        session.add(
            JobEpochRow(
                job_id=job_id, epoch=2, step=1, expected_samples=samples, elapsed=0.0, metrics={}
            )
        )
        session.commit()
    assert model_ptr.progress()["expected_samples"] == samples
    ds.close()
