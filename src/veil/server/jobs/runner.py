"""The job runner interface and its embedded default (threads in the node process).

A runner only decides *where* jobs run; which job runs next is the database queue's
rule (`services.job_queue`), and what a job does is `jobs.fit.run_fit_job`, which needs
nothing but the node context, so the same code runs in a node thread or in a Celery
worker on another machine. `submit` is a wake-up, not a hand-over: whoever is woken
claims the next job the queue allows. Cancellation goes through the database
(`jobs.cancel_requested`), so it works for both backends.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from veil.server.compute import lower_priority
from veil.server.jobs.supervisor import Supervisor
from veil.server.jobs.worker import Worker

if TYPE_CHECKING:
    from veil.server.context import NodeContext

__all__ = ["EmbeddedRunner", "JobRunner", "make_runner"]

log = logging.getLogger("veil.jobs")


class JobRunner(Protocol):
    def submit(self) -> None:
        """A job was queued: wake a worker."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class EmbeddedRunner:
    """Runs jobs on a small thread pool inside the node; the API stays responsive.

    After a restart it resumes the jobs the previous process left: those it gave back
    when it stopped at once, those it was running when it died once their lease expires.
    """

    def __init__(self, ctx: NodeContext) -> None:
        settings = ctx.settings
        self.worker = Worker(ctx, slots=settings.job_workers)
        self._supervisor = Supervisor(
            ctx.db,
            lease_seconds=settings.job_lease_seconds,
            max_starts=settings.job_max_starts,
            wake=self.submit,
            worker=self.worker,
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pending = 0  # drains submitted and not finished: never more than the slots
        self._again = False  # a wake-up came: some drain must look at the queue once more
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.worker.slots, thread_name_prefix="veil-job", initializer=lower_priority
                )
        self._supervisor.start()

    def submit(self) -> None:
        self.start()
        with self._lock:
            self._again = True
            if self._pool is None or self._pending >= self.worker.slots:
                return  # a busy drain sees `_again` and looks at the queue once more
            self._pending += 1
            self._pool.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:  # checked and released under one lock: no wake-up is lost
                if not self._again or self.worker.stopping.is_set():
                    self._pending -= 1
                    return
                self._again = False
            try:
                self.worker.drain()
            except Exception:  # run_fit_job records failures itself; this is the last resort
                log.exception("job runner crashed")

    def stop(self) -> None:
        self.worker.stopping.set()  # running jobs checkpoint and go back to the queue
        self._supervisor.stop()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def make_runner(ctx: NodeContext) -> JobRunner:
    """The runner the settings ask for: embedded threads, or Celery workers over Redis."""
    if ctx.settings.job_backend == "celery":
        from veil.server.jobs.celery_app import CeleryRunner

        return CeleryRunner(ctx)
    return EmbeddedRunner(ctx)
