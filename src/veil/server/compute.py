"""Training and evaluation run at a lower CPU priority than the API.

Logins, listings and progress polls are short; training steps are long and many. On a
node whose cores are busy training, the kernel shares them fairly among threads, so a
login would wait behind every running step. Threads that train (the embedded job
runner's, and the pool that computes `step` and `evaluate` for requests) therefore run
at nice `COMPUTE_NICE`; the API's threads keep the default. Torch's worker threads are
created by the thread that first runs a parallel region on them, and inherit its nice
value. Raising one's own nice value needs no privilege; where the platform has no
per-thread nice, this does nothing.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from veil._exceptions import RateLimited

__all__ = ["COMPUTE_NICE", "ComputePool", "lower_priority", "preload_torch"]

COMPUTE_NICE = 10

T = TypeVar("T")


def lower_priority() -> None:
    """Run the calling thread (and the threads it starts) at nice COMPUTE_NICE."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), COMPUTE_NICE)


_preload: threading.Thread | None = None
_preload_lock = threading.Lock()


def preload_torch() -> threading.Thread:
    """Import, once per process, on a background thread at nice COMPUTE_NICE, what the
    first model a process compiles would otherwise wait for: torch builds its first
    optimizer only after importing `torch._dynamo` (1.1 s and 67 MiB on this project's
    2-core machine). Started by a data scientist's login, the usual prelude to a
    compile, not at the node's start: a node that only stores data never pays for it,
    and an upload right after a start does not share the cores with it. A request that
    needs the module meanwhile waits for the import under way, never for a second one."""
    global _preload

    def run() -> None:
        lower_priority()
        import torch._dynamo  # noqa: F401

    with _preload_lock:
        if _preload is None:
            _preload = threading.Thread(target=run, name="veil-preload", daemon=True)
            _preload.start()
        return _preload


class ComputePool:
    """Runs a request's computation on a thread at lower priority, and waits for it.

    Its threads are shared by every user, so each user has at most `per_user` requests
    computing or waiting to (`admitted`: steps and evaluations, and statistics and fit
    quotes, which compute in the API's own threads); one more is refused at once (RateLimited,
    429) rather than queued, so that one user's burst holds neither these threads nor
    the API's worker threads, which the waiting requests would occupy."""

    def __init__(self, threads: int, *, per_user: int) -> None:
        self._pool = ThreadPoolExecutor(
            threads, thread_name_prefix="veil-compute", initializer=lower_priority
        )
        self.per_user = per_user
        self._admitted: dict[str, int] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def admitted(self, user_id: str) -> Iterator[None]:
        """A slot of the user's for one request's computation, for the block."""
        with self._guard:
            held = self._admitted.get(user_id, 0)
            if held >= self.per_user:
                raise RateLimited(
                    f"This node computes at most {self.per_user} requests of one user at "
                    f"once (steps, evaluations, statistics, quotes). Received: one more "
                    f"while {held} of yours compute; wait for one to answer, then retry.",
                    limit=self.per_user,
                    running=held,
                )
            self._admitted[user_id] = held + 1
        try:
            yield
        finally:
            with self._guard:
                left = self._admitted.pop(user_id) - 1
                if left:
                    self._admitted[user_id] = left

    def run(self, fn: Callable[[], T]) -> T:
        return self._pool.submit(fn).result()
