"""The job runner interface and its embedded default (threads in the node process).

A runner only decides *where* a job runs; what a job does is `jobs.fit.run_fit_job`,
which needs nothing but the settings (it rebuilds its own database and stores), so
the same function runs in a node thread or in a Celery worker on another machine.
Cancellation goes through the database (`jobs.cancel_requested`), so it works for
both backends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from veil.server.context import NodeContext

__all__ = ["EmbeddedRunner", "JobRunner", "make_runner"]

log = logging.getLogger("veil.jobs")


class JobRunner(Protocol):
    def submit(self, job_id: str) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class EmbeddedRunner:
    """Runs jobs on a small thread pool inside the node; the API stays responsive."""

    def __init__(self, run_job: Callable[[str], None], *, workers: int) -> None:
        self._run_job = run_job
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def start(self) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="veil-job")

    def submit(self, job_id: str) -> None:
        self.start()
        assert self._pool is not None
        self._pool.submit(self._guarded, job_id)

    def _guarded(self, job_id: str) -> None:
        try:
            self._run_job(job_id)
        except Exception:  # run_job records failures itself; this is the last resort
            log.exception("job %s crashed", job_id)

    def stop(self) -> None:
        self.stopping.set()  # running jobs stop after their current step
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def make_runner(ctx: NodeContext) -> JobRunner:
    """The runner the settings ask for: embedded threads, or Celery workers over Redis."""
    if ctx.settings.job_backend == "celery":
        from veil.server.jobs.celery_app import CeleryRunner

        return CeleryRunner(ctx.settings)
    from veil.server.jobs.fit import run_fit_job

    runner = EmbeddedRunner(
        lambda job_id: run_fit_job(ctx, job_id, runner.stopping), workers=ctx.settings.job_workers
    )
    return runner
