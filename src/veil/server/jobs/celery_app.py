"""The scale-out job backend: Celery workers over Redis.

The node (with `job_backend="celery"`) only enqueues a job id; a worker on any machine
that shares the database and the data directory runs `run_fit_job` with a context of
its own, built from the same `VEIL_*` settings. Progress, cancellation and the ledger
all go through the database, so nothing else has to travel.
"""

from __future__ import annotations

import threading

from celery import Celery

from veil.server.settings import Settings

__all__ = ["TASK_NAME", "CeleryRunner", "make_celery", "run_worker"]

TASK_NAME = "veil.run_fit_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("veil", broker=settings.redis_url, backend=None)
    app.conf.update(
        task_serializer="json",  # job ids only; never pickle
        accept_content=["json"],
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    return app


class CeleryRunner:
    def __init__(self, settings: Settings) -> None:
        self._app = make_celery(settings)

    def start(self) -> None:
        return None

    def submit(self, job_id: str) -> None:
        self._app.send_task(TASK_NAME, args=[job_id])

    def stop(self) -> None:
        return None


def run_worker(*, concurrency: int = 1) -> None:
    """Start a worker process with settings from the environment (VEIL_*)."""
    from veil.server.context import NodeContext
    from veil.server.jobs.fit import run_fit_job

    settings = Settings()
    app = make_celery(settings)
    ctx = NodeContext.create(settings.model_copy(update={"job_backend": "embedded"}))
    ctx.db.migrate()
    stopping = threading.Event()

    @app.task(name=TASK_NAME)
    def _run(job_id: str) -> None:
        run_fit_job(ctx, job_id, stopping)

    app.worker_main(["worker", f"--concurrency={concurrency}", "--pool=threads", "--loglevel=INFO"])
