"""The scale-out backend: the node enqueues over Redis, a Celery worker process trains."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.flows.data import upload_images
from tests.nodes import fresh_postgres_url, running_node
from veil import nn

REDIS_URL = "redis://127.0.0.1:6379/8"


def test_a_celery_worker_runs_fit_jobs(tmp_path) -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()  # no task left over from an earlier run
    with fresh_postgres_url() as database_url:
        data_dir = tmp_path / "shared"
        with running_node(
            data_dir, database_url=database_url, job_backend="celery", redis_url=REDIS_URL
        ) as node:
            env = {
                **os.environ,
                "VEIL_DATA_DIR": str(data_dir),
                "VEIL_DATABASE_URL": database_url,
                "VEIL_REDIS_URL": REDIS_URL,
            }
            worker = subprocess.Popen(
                [sys.executable, "-m", "veil.cli", "worker", "--concurrency", "1"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
                upload_images(admin, n=120)
                ds = make_ds(admin, node)
                data = ds.datasets["Patches"]
                model = nn.Model()
                model.add(nn.Flatten(input_shape=(None, 1, 28, 28)))
                model.add(nn.Dense(1, activation="sigmoid"))
                model_ptr = model.compile(to=ds)
                job = model_ptr.fit(
                    data["train_images"],
                    data["train_labels"],
                    max_iter=2,
                    batch_size=30,
                    wait=False,
                )
                deadline = time.monotonic() + 120
                while model_ptr.progress()["status"] not in ("done", "failed"):
                    assert time.monotonic() < deadline, model_ptr.progress()
                    assert worker.poll() is None, "the worker died"
                    time.sleep(0.5)
                final = model_ptr.progress()
                assert final["status"] == "done" and final["job_id"] == job["job_id"]
                assert final["epoch"] == 2 and final["cart"] > 0
                assert model_ptr.weights().publish().cost > 0
            finally:
                worker.terminate()
                worker.wait(timeout=30)
