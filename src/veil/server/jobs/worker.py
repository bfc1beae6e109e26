"""The jobs one process runs: claimed from the database queue, each under a lease.

A `Worker` is what the embedded runner's threads and a Celery worker's tasks call:
`drain()` claims jobs (fairly, see `services.job_queue`) and runs them one after the
other until none may start or the process stops. The supervisor thread renews the
leases it holds (`renew_leases`); a lease it cannot renew is marked lost, and its job
stops at the next step without writing anything.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from veil.server.services import job_queue
from veil.server.services.job_queue import Claim

if TYPE_CHECKING:
    from veil.server.context import NodeContext

__all__ = ["Lease", "Worker"]

log = logging.getLogger("veil.jobs")


@dataclass
class Lease:
    """A claim held by this process, and whether it was lost since."""

    claim: Claim
    lost: threading.Event = field(default_factory=threading.Event)


class Worker:
    def __init__(self, ctx: NodeContext, *, slots: int) -> None:
        self._ctx = ctx
        self.slots = slots
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()

    @property
    def lease_seconds(self) -> float:
        return self._ctx.settings.job_lease_seconds

    @property
    def idle_slots(self) -> int:
        with self._lock:
            return self.slots - len(self._held)

    def drain(self) -> None:
        """Run queued jobs until none may start, every slot is taken, or we stop."""
        from veil.server.jobs.fit import run_fit_job

        while not self.stopping.is_set():
            lease = self._claim()
            if lease is None:
                return
            try:
                run_fit_job(self._ctx, lease, self.stopping)
            finally:
                with self._lock:
                    self._held.pop(lease.claim.job_id, None)

    def _claim(self) -> Lease | None:
        with self._lock:  # a slot is reserved before the claim, so slots are never exceeded
            if len(self._held) >= self.slots:
                return None
            claim = job_queue.claim_next(
                self._ctx.db, worker=self.name, lease_seconds=self.lease_seconds
            )
            if claim is None:
                return None
            lease = Lease(claim)
            self._held[claim.job_id] = lease
            return lease

    def renew_leases(self) -> None:
        with self._lock:
            held = list(self._held.values())
        for lease in held:
            if not job_queue.renew(self._ctx.db, lease.claim, lease_seconds=self.lease_seconds):
                log.warning("lost the lease of job %s; stopping it", lease.claim.job_id)
                lease.lost.set()
