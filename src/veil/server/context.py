"""What a running node holds: settings, database, stores, job runner.

One `NodeContext` per app, built by the app factory and reachable from routes through
`api.deps`; services take the pieces they need as arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from veil.server.compute import ComputePool
from veil.server.db.engine import Database
from veil.server.jobs.signals import JobSignals
from veil.server.services.models import sweep_deleted_models
from veil.server.services.releases import sweep_orphans
from veil.server.services.throttle import LoginThrottle
from veil.server.settings import Settings
from veil.server.storage.arrays import ArrayStore
from veil.server.storage.files import NodeFiles

if TYPE_CHECKING:
    from veil.server.jobs.runner import JobRunner
    from veil.server.services.live_models import LiveModels

__all__ = ["NodeContext"]

_COMPUTE_THREADS = 8  # steps and evaluations computing at once (each holds its model's lock)


@dataclass
class NodeContext:
    settings: Settings
    db: Database
    throttle: LoginThrottle
    files: NodeFiles
    arrays: ArrayStore
    live: LiveModels
    runner: JobRunner
    compute: ComputePool
    signals: JobSignals = field(default_factory=JobSignals)
    on_start: list[Callable[[], None]] = field(default_factory=list)
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def create(cls, settings: Settings) -> NodeContext:
        import torch

        from veil.server.jobs.runner import make_runner
        from veil.server.services.live_models import LiveModels

        # A float too small for the normal range costs a microcode assist (up to ~100x
        # slower on x86), so a private value that makes one would take measurably
        # longer. Flushed to zero from here on; the threads this process starts later
        # (server, jobs, torch's pool) inherit the setting.
        torch.set_flush_denormal(True)
        # Several threads train at once (jobs, the compute pool): ops split over all the
        # cores waited on one another's busy cores (an MLP fit ran 4 to 10 times slower
        # with two threads per op on two cores; `benchmarks/training.py` notes).
        torch.set_num_threads(settings.torch_threads)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        files = NodeFiles(settings.data_dir)
        ctx = cls(
            settings=settings,
            db=Database(settings.resolved_database_url),
            throttle=LoginThrottle(
                allowed=settings.login_failures_allowed,
                backoff_seconds=settings.login_backoff_seconds,
                max_backoff_seconds=settings.login_backoff_max_seconds,
            ),
            files=files,
            arrays=ArrayStore(settings.arrays_dir),
            live=LiveModels(files, device=settings.device),
            runner=None,  # type: ignore[arg-type]  # set below: the runner needs the context
            compute=ComputePool(_COMPUTE_THREADS, per_user=settings.max_user_computations),
        )
        ctx.runner = make_runner(ctx)
        # A crash between a publish's file and its commit leaves a file nothing points to,
        # one between a model's delete and its files' removal a folder.
        ctx.on_start.append(lambda: sweep_orphans(ctx.db, ctx.files))
        ctx.on_start.append(lambda: sweep_deleted_models(ctx.db, ctx.files))
        return ctx

    def start(self) -> None:
        """Start background parts (the job runner) once the server serves."""
        self.runner.start()
        for hook in self.on_start:
            hook()

    def stop(self) -> None:
        for hook in reversed(self.on_stop):
            hook()
        self.runner.stop()
        self.db.dispose()
