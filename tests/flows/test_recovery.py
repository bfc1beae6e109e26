"""Problem 1 of issue 8: a fit is never lost with its worker or its node.

On the real PostgreSQL and Redis: the API and two `veil worker` processes run flows II
and III; every worker is killed with SIGKILL in the middle of a fit, a new worker is
started, and the fit finishes with a cart equal to its quote (each step counted once).
The same holds for a node with the embedded runner killed with SIGKILL mid-fit and
started again, and for one that is stopped and started again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, DS_PASSWORD, login, make_ds
from tests.flows.data import image_mlp, upload_images
from tests.nodes import free_port, fresh_postgres_url, running_node

REDIS_URL = "redis://127.0.0.1:6379/9"  # a database of its own: test files may run side by side
# Short leases and frequent checkpoints, so that a test sees both within seconds.
FAST = {"VEIL_JOB_LEASE_SECONDS": "2", "VEIL_CHECKPOINT_EVERY_SECONDS": "1"}
FIT = {"max_iter": 24, "batch_size": 8}  # 400 rows: 50 steps an epoch, 1200 in all


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _past_its_first_epoch(model_ptr) -> Callable[[], bool]:
    """The first epoch is checkpointed (its end is), and the fit runs on."""

    def ready() -> bool:
        progress = model_ptr.progress()
        return progress["status"] == "running" and progress["epoch"] >= 1

    return ready


def _mid_fit(model_ptr) -> None:
    progress = model_ptr.progress()
    assert progress["status"] in ("running", "queued") and progress["step"] < progress["steps"]


def _finishes_as_quoted(model_ptr, quote: dict) -> None:
    ended = ("done", "failed", "cancelled")
    _wait_for(lambda: model_ptr.progress()["status"] in ended, "the fit to end", timeout=300)
    final = model_ptr.progress()
    assert final["status"] == "done", final
    assert final["restarts"] >= 1  # it did lose its worker and resume
    # each step is in the cart exactly once: the cart is what the quote priced
    assert final["total_steps"] == final["steps"] == quote["steps"]
    assert final["cart"] == pytest.approx(quote["cost"], rel=1e-9)
    published = model_ptr.weights().publish()
    assert published.cost == pytest.approx(quote["cost"], rel=1e-9)


def _worker(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "veil.cli", "worker", "--concurrency", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short leases and frequent checkpoints for the nodes this test starts in-process."""
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)


@pytest.mark.postgres
def test_a_fit_survives_every_worker_killed(tmp_path, fast) -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()  # no task left over from an earlier run
    with fresh_postgres_url() as database_url:
        data_dir = tmp_path / "shared"
        env = {
            **os.environ,
            "VEIL_DATA_DIR": str(data_dir),
            "VEIL_DATABASE_URL": database_url,
            "VEIL_REDIS_URL": REDIS_URL,
        }
        with running_node(
            data_dir, database_url=database_url, job_backend="celery", redis_url=REDIS_URL
        ) as node:
            workers = [_worker(env), _worker(env)]
            try:
                admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
                upload_images(admin, n=400)
                ds = make_ds(admin, node, budget=1e6)
                data = ds.datasets["Patches"]
                x, y = data["train_images"], data["train_labels"]

                # flow II: quote, fit on a worker
                model_ptr = image_mlp().compile(to=ds)
                quote = model_ptr.quote(x, y, **FIT)
                model_ptr.fit(x, y, wait=False, **FIT)
                _wait_for(_past_its_first_epoch(model_ptr), "a checkpoint mid-fit")

                for worker in workers:
                    worker.send_signal(signal.SIGKILL)
                for worker in workers:
                    worker.wait(timeout=30)
                _mid_fit(model_ptr)  # still "running" (its lease runs out), or requeued
                # flow III while no worker lives, by another user, on the API node
                other = make_ds(admin, node)
                theirs = other.datasets["Patches"]
                stepped = image_mlp().compile(to=other)
                loss_ptr, _ = stepped.step(
                    theirs["train_images"][0:32], theirs["train_labels"][0:32]
                )
                released = loss_ptr.publish(epsilon=0.5)
                assert released.cost > 0 and isinstance(released.get(), float)

                workers.append(_worker(env))
                _finishes_as_quoted(model_ptr, quote)
                assert ds.privacy_budget.spent == pytest.approx(quote["cost"], rel=1e-9)
                assert other.privacy_budget.spent == pytest.approx(released.cost)
            finally:
                for worker in workers:
                    if worker.poll() is None:
                        worker.terminate()
                        worker.wait(timeout=60)


def _serve(data_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veil.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        env={**os.environ, **FAST},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _login_when_up(port: int, email: str, password: str) -> veil.Client:
    deadline = time.monotonic() + 120
    while True:
        try:
            return veil.login(email, password, port=port, verbose=False)
        except veil.TransportError:
            assert time.monotonic() < deadline, "the node did not start"
            time.sleep(0.3)


def test_a_fit_survives_its_embedded_node_killed(tmp_path) -> None:
    data_dir, port = tmp_path / "node", free_port()
    node = _serve(data_dir, port)
    try:
        admin = _login_when_up(port, ADMIN_EMAIL, ADMIN_PASSWORD)
        upload_images(admin, n=400)
        email = "ds@lab.org"
        admin.users.create(email=email, password=DS_PASSWORD, name="DS", budget=1e6)
        ds = veil.login(email, DS_PASSWORD, port=port, verbose=False)
        data = ds.datasets["Patches"]
        model_ptr = image_mlp().compile(to=ds)
        quote = model_ptr.quote(data["train_images"], data["train_labels"], **FIT)
        model_ptr.fit(data["train_images"], data["train_labels"], wait=False, **FIT)
        _wait_for(_past_its_first_epoch(model_ptr), "a checkpoint mid-fit")
        node.send_signal(signal.SIGKILL)
        node.wait(timeout=30)
        node = _serve(data_dir, port)
        ds = _login_when_up(port, email, DS_PASSWORD)
        _finishes_as_quoted(ds.models.get(model_ptr.id), quote)
    finally:
        if node.poll() is None:
            node.terminate()
            node.wait(timeout=60)


def test_a_fit_resumes_when_its_embedded_node_stops_and_starts(tmp_path, fast) -> None:
    with running_node(tmp_path / "n") as node:
        admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
        upload_images(admin, n=400)
        ds = make_ds(admin, node, budget=1e6)
        data = ds.datasets["Patches"]
        model_ptr = image_mlp().compile(to=ds)
        quote = model_ptr.quote(data["train_images"], data["train_labels"], **FIT)
        model_ptr.fit(data["train_images"], data["train_labels"], wait=False, **FIT)
        _wait_for(lambda: model_ptr.progress()["step"] > 0, "training to start")
        email = ds.user.email
    # the node stopped: its job went back to the queue with what it had trained
    with running_node(tmp_path / "n") as node:
        ds = login(node, email, DS_PASSWORD)
        _finishes_as_quoted(ds.models.get(model_ptr.id), quote)
