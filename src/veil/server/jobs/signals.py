"""Wakes requests that wait for a model's job to move (`GET .../progress?wait=`).

A job running in this process (the embedded runner) calls `notify` after each write a
reader could see: it recorded progress (every 0.5 s of training, the first too, so a
start shows within that), checkpointed, finished. A waiting request then reads the job
at once instead of at its next poll. A job run by a Celery worker notifies in the
worker's process, not here; its readers fall back to reading the database every
`FALLBACK_POLL_S`, so a wake-up is a shortcut, never needed for being right.

Each model has a counter that `notify` increments; a reader notes it before reading
the database and waits for it to change, so no notification between the two is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["FALLBACK_POLL_S", "JobSignals"]

FALLBACK_POLL_S = 1.0


class JobSignals:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}

    def count(self, model_id: str) -> int:
        with self._lock:
            return self._counts.get(model_id, 0)

    def notify(self, model_id: str) -> None:
        """The model's job moved. Safe from any thread."""
        with self._lock:
            self._counts[model_id] = self._counts.get(model_id, 0) + 1
            waiters = self._waiters.pop(model_id, [])
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there now
                loop.call_soon_threadsafe(_resolve, future)

    async def changed(self, model_id: str, *, since: int, timeout: float) -> None:
        """Return once the model's count differs from `since`, or after `timeout` s."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        entry = (loop, future)
        with self._lock:
            if self._counts.get(model_id, 0) != since:
                return
            self._waiters.setdefault(model_id, []).append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                waiting = self._waiters.get(model_id, [])
                if entry in waiting:
                    waiting.remove(entry)
                    if not waiting:
                        del self._waiters[model_id]


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
