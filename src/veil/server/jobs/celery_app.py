"""The scale-out job backend: Celery workers over Redis.

The node (with `job_backend="celery"`) sends a wake-up over Redis for each queued job;
a worker on any machine that shares the database and the data directory takes it and
drains the database queue (`jobs.worker`) with a context of its own, built from the
same `VEIL_*` settings. Progress, cancellation, leases and the ledger all go through
the database, so nothing else has to travel.

No job is lost with its worker: the database lease is what counts (a supervisor thread
in the node and in every worker requeues a job whose lease expired, within a lease).
Celery's own redelivery is a second net: messages are acknowledged late, rejected when
the worker process is lost, and Redis hands an unacknowledged message to another worker
after a visibility timeout of minutes (not the default hour). A redelivered wake-up
finds the job running or done and does nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from celery import Celery
from celery.signals import worker_shutting_down

from veil.server.compute import lower_priority
from veil.server.jobs.supervisor import Supervisor
from veil.server.jobs.worker import Worker
from veil.server.settings import Settings

if TYPE_CHECKING:
    from veil.server.context import NodeContext

__all__ = ["TASK_NAME", "CeleryRunner", "make_celery", "run_worker"]

TASK_NAME = "veil.run_jobs"

log = logging.getLogger("veil.jobs")


def make_celery(settings: Settings) -> Celery:
    app = Celery("veil", broker=settings.redis_url, backend=None)
    app.conf.update(
        task_serializer="json",  # no arguments at all; never pickle
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.celery_visibility_timeout_seconds},
    )
    return app


class CeleryRunner:
    """The node's side: wake-ups over Redis, and a supervisor that requeues lost jobs."""

    def __init__(self, ctx: NodeContext) -> None:
        self._app = make_celery(ctx.settings)
        self._supervisor = Supervisor(
            ctx.db,
            lease_seconds=ctx.settings.job_lease_seconds,
            max_starts=ctx.settings.job_max_starts,
            wake=self.submit,
        )

    def start(self) -> None:
        self._supervisor.start()

    def submit(self) -> None:
        try:
            self._app.send_task(TASK_NAME)
        except Exception:  # Redis away: the job waits in the database, where workers look
            log.warning("could not wake a worker over Redis; the job waits in the queue")

    def stop(self) -> None:
        self._supervisor.stop()


def run_worker(*, concurrency: int = 1) -> None:
    """Start a worker process with settings from the environment (VEIL_*)."""
    from veil.server.context import NodeContext

    settings = Settings()
    app = make_celery(settings)
    ctx = NodeContext.create(settings.model_copy(update={"job_backend": "embedded"}))
    ctx.db.migrate()
    worker = Worker(ctx, slots=concurrency)
    supervisor = Supervisor(
        ctx.db,
        lease_seconds=settings.job_lease_seconds,
        max_starts=settings.job_max_starts,
        wake=lambda: app.send_task(TASK_NAME),
        worker=worker,
    )

    @app.task(name=TASK_NAME)
    def _run() -> None:
        lower_priority()  # below an API sharing the machine (see veil.server.compute)
        worker.drain()

    @worker_shutting_down.connect
    def _shutting_down(**_: object) -> None:
        # A warm shutdown waits for running tasks: make them checkpoint and give their
        # jobs back to the queue instead of training to the end.
        worker.stopping.set()

    supervisor.start()  # its first look also starts whatever is waiting
    try:
        app.worker_main(
            ["worker", f"--concurrency={concurrency}", "--pool=threads", "--loglevel=INFO"]
        )
    finally:
        supervisor.stop()
