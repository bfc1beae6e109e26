"""Load test with Locust: twenty data scientists on one node, PostgreSQL, two workers.

Starts, each in its own process: `veil serve --demo --job-backend celery` on a fresh
PostgreSQL database and a Redis database, and two `veil worker` processes sharing
them. Then `--users` simulated data scientists (Locust, headless, in this process), each
with an account of its own, do what a data scientist does between thinking pauses:
list the datasets, poll the progress of their fit, step a model on 32 rows of
`Digits`, and start a short fit (2 epochs) whenever their last one ended. Fits queue
on the node's fair queue (one running per user, two workers in all).

Prints p50 / p99 / max per route and the errors, and writes
``benchmarks/results/load.json`` with the machine it ran on.

    python benchmarks/load.py [--users 20] [--seconds 120]
        [--pg-admin-url postgresql://postgres@127.0.0.1:5432/test]
        [--redis-url redis://127.0.0.1:6379/10]
"""

from __future__ import annotations

# isort: off
# Locust patches the standard library (gevent) when imported; it goes first.
try:
    import locust
except ModuleNotFoundError:
    raise SystemExit(
        "load.py needs Locust (the tests do not install it): bash scripts/setup bench"
    ) from None
# isort: on

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import gevent
import psycopg
import redis
from _serve import free_port, login_when_up
from _sizes import machine, size_flags
from locust import HttpUser, between, task
from locust.env import Environment

import veil
from veil import nn

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"
PASSWORD = "load-password"
FIT = {"max_iter": 2, "batch_size": 64}
ROWS = 32


@contextmanager
def _fresh_database(admin_url: str) -> Iterator[str]:
    name = f"veil_load_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        host = admin_url.split("://", 1)[1].rsplit("/", 1)[0]
        yield f"postgresql+psycopg://{host}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _process(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    quiet = subprocess.DEVNULL  # the workers log every task
    process = subprocess.Popen(command, env=env, stdout=quiet, stderr=quiet)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=120)


def _model_spec() -> dict:
    model = nn.Model()
    model.add(nn.Rescaling(1 / 16, input_shape=(None, 1, 8, 8)))
    model.add(nn.Flatten())
    model.add(nn.Dense(32, activation="relu"))
    model.add(nn.Dense(10))
    model.add(nn.Softmax())
    return model.to_spec(loss=nn.CrossEntropy())


class DataScientist(HttpUser):
    """One account; a model it steps, a model it fits, pointers to Digits."""

    wait_time = between(0.5, 2.0)
    accounts: list[str] = []
    spec: dict = {}
    fits_done = 0  # over every user: fits seen ending "done"
    longest_queue = 0  # the highest queue_position a poll saw

    def on_start(self) -> None:
        email = self.accounts.pop()
        token = self.client.post(
            "/api/v1/auth/login", json={"email": email, "password": PASSWORD}, name="/auth/login"
        ).json()["token"]
        self.client.headers["Authorization"] = f"Bearer {token}"
        digits = self.client.get("/api/v1/datasets/Digits", name="/datasets/{name}").json()
        assets = {a["name"]: a["id"] for a in digits["assets"]}
        self.x, self.y = assets["images"], assets["labels"]
        start = random.randrange(0, 1400 - ROWS)
        self.x_batch, self.y_batch = (
            self.client.post(
                f"/api/v1/assets/{pointer}/slice",
                json={"start": start, "stop": start + ROWS},
                name="/assets/{id}/slice",
            ).json()["id"]
            for pointer in (self.x, self.y)
        )
        self.stepped, self.fitted = (
            self.client.post("/api/v1/models", json={"spec": self.spec}, name="/models").json()[
                "id"
            ]
            for _ in range(2)
        )
        self.fitting = False

    @task(4)
    def list_datasets(self) -> None:
        self.client.get("/api/v1/datasets", name="/datasets")

    @task(4)
    def poll_progress(self) -> None:
        answer = self.client.get(
            f"/api/v1/models/{self.fitted}/progress", name="/models/{id}/progress"
        )
        if not answer.ok:
            return
        progress = answer.json()
        if self.fitting and progress["status"] == "done":
            DataScientist.fits_done += 1
        self.fitting = progress["status"] in ("queued", "running")
        place = progress["queue_position"] or 0
        DataScientist.longest_queue = max(DataScientist.longest_queue, place)

    @task(2)
    def step(self) -> None:
        body = {"x": self.x_batch, "y": self.y_batch}
        self.client.post(f"/api/v1/models/{self.stepped}/step", json=body, name="/models/{id}/step")

    @task(1)
    def fit(self) -> None:
        if self.fitting:
            return
        body = {"x": self.x, "y": self.y, **FIT}
        answer = self.client.post(
            f"/api/v1/models/{self.fitted}/fit", json=body, name="/models/{id}/fit"
        )
        self.fitting = answer.ok


def _percentile(entry, fraction: float) -> float:
    return float(entry.get_response_time_percentile(fraction) or 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    size_flags(parser, RESULTS, quick="30 seconds", tiny="3 seconds, 2 users")
    args = parser.parse_args()
    if args.tiny:
        args.seconds, args.users, args.spawn_rate = 3.0, 2, 2.0
    elif args.quick:
        args.seconds = 30.0

    redis.Redis.from_url(args.redis_url).flushdb()
    port = free_port()
    with ExitStack() as stack:
        database_url = stack.enter_context(_fresh_database(args.pg_admin_url))
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "node"
        env = {
            **os.environ,
            "VEIL_DATA_DIR": str(data_dir),
            "VEIL_DATABASE_URL": database_url,
            "VEIL_REDIS_URL": args.redis_url,
            "VEIL_LOG_LEVEL": "warning",
        }
        cli = [sys.executable, "-m", "veil.cli"]
        node = stack.enter_context(
            _process([*cli, "serve", "--demo", "--job-backend", "celery", "--port", str(port)], env)
        )
        admin = login_when_up(node, port)
        for _ in range(2):
            stack.enter_context(_process([*cli, "worker", "--concurrency", "1"], env))
        DataScientist.accounts = [f"ds{i}@load.org" for i in range(args.users)]
        for email in DataScientist.accounts:
            admin.users.create(email=email, password=PASSWORD, budget=1e9)
        DataScientist.spec = _model_spec()

        environment = Environment(user_classes=[DataScientist], host=f"http://127.0.0.1:{port}")
        runner = environment.create_local_runner()
        runner.start(args.users, spawn_rate=args.spawn_rate)
        gevent.sleep(args.seconds)
        runner.quit()

    rows = []
    for (name, method), entry in sorted(environment.stats.entries.items()):
        rows.append(
            {
                "route": f"{method} {name}",
                "requests": entry.num_requests,
                "failures": entry.num_failures,
                "p50_ms": _percentile(entry, 0.5),
                "p99_ms": _percentile(entry, 0.99),
                "max_ms": float(entry.max_response_time or 0.0),
                "rps": entry.total_rps,
            }
        )
    errors = [
        {"route": f"{e.method} {e.name}", "error": str(e.error), "count": e.occurrences}
        for e in environment.stats.errors.values()
    ]
    machine_record = {**machine(), "locust": locust.__version__, "veil": veil.__version__}
    print(
        f"{args.users} data scientists for {args.seconds:.0f} s; PostgreSQL, Redis, "
        f"API and two workers on one machine of {os.cpu_count()} CPUs"
    )
    print(f"{'route':34} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for row in rows:
        print(
            f"{row['route']:34} {row['requests']:>8} {row['failures']:>6} "
            f"{row['p50_ms']:>8.0f} {row['p99_ms']:>8.0f} {row['max_ms']:>8.0f}"
        )
    for error in errors:
        print(f"error: {error['route']}: {error['error']} x{error['count']}")
    print(
        f"fits seen done: {DataScientist.fits_done}; "
        f"longest place in the queue seen: {DataScientist.longest_queue}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "users": args.users,
                "seconds": args.seconds,
                "routes": rows,
                "errors": errors,
                "fits_done": DataScientist.fits_done,
                "longest_queue": DataScientist.longest_queue,
                "machine": machine_record,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
