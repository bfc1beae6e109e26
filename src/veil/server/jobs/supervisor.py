"""One thread per process that keeps jobs from being lost.

Every third of a lease it renews the leases of the jobs this process runs, requeues
jobs whose lease expired (their worker died: SIGKILL, a lost machine), and wakes the
runner when a job may start and this process has a free slot. It runs in the node
(whatever the backend: requeuing is safe from any number of processes at once) and in
every `veil worker`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from veil.server.db.engine import Database
from veil.server.jobs.worker import Worker
from veil.server.services import job_queue

__all__ = ["Supervisor"]

log = logging.getLogger("veil.jobs")


class Supervisor:
    def __init__(
        self,
        db: Database,
        *,
        lease_seconds: float,
        max_starts: int,
        wake: Callable[[], None],
        worker: Worker | None = None,
    ) -> None:
        self._db = db
        self._period = lease_seconds / 3
        self._max_starts = max_starts
        self._wake = wake
        self._worker = worker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="veil-jobs", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the database may be away for a while; try again next time
                log.exception("job supervision failed; retrying")
            self._stop.wait(self._period)

    def tick(self) -> None:
        if self._worker is not None:
            self._worker.renew_leases()
        requeued = job_queue.requeue_expired(self._db, max_starts=self._max_starts)
        if requeued:
            log.warning("requeued %d job(s) whose worker was lost: %s", len(requeued), requeued)
        for _ in requeued:  # one wake-up each, so idle workers elsewhere share them
            self._wake()
        worker = self._worker
        if not requeued and worker and worker.idle_slots and job_queue.has_waiting(self._db):
            self._wake()  # a job may start and we are free: a wake-up was lost, or none came
