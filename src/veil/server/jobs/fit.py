"""Run one `fit` job: DP-SGD over the Poisson pool, cart updated step by step.

The cart gains one Poisson-subsampled Gaussian step per step (O(1)). At each epoch's
end the weights and the cart are checkpointed together, and the validation metrics,
if the fit holds out rows, go through the release path (`fits.release_validation`,
which owns the rule for withholding them). Progress shows public counts only: steps,
epochs and the expected number of rows sampled, never the exact Poisson batch sizes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from veil._exceptions import VeilError
from veil.engine import EpochInfo, StepInfo
from veil.server.context import NodeContext
from veil.server.db.base import utcnow
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.models import JobEpochRow, JobRow, ModelRow
from veil.server.services import fits
from veil.server.services.checkpoints import (
    load_cart,
    load_trainer,
    prune_old_versions,
    save_checkpoint,
)
from veil.server.services.models import get_model
from veil.server.services.node import get_node

__all__ = ["run_fit_job"]

log = logging.getLogger("veil.jobs")

PROGRESS_EVERY_S = 0.5


def run_fit_job(ctx: NodeContext, job_id: str, stopping: threading.Event | None = None) -> None:
    """Run the job to its end; every outcome is recorded on the job row."""
    stopping = stopping or threading.Event()
    with ctx.db.write_session() as session:
        job = session.get(JobRow, job_id)
        if job is None or job.status != "queued":
            return
        if job.cancel_requested:
            _finish(ctx, job_id, "cancelled", None)
            return
        job.status = "running"
        job.started_at = utcnow()
        session.commit()
    try:
        outcome = _train(ctx, job_id, stopping)
        _finish(ctx, job_id, outcome, None)
    except VeilError as exc:
        _finish(ctx, job_id, "failed", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # the job must end recorded, whatever happened
        log.exception("fit job %s failed", job_id)
        # The text of an unexpected error could quote a value; the data scientist gets
        # its type only, the node's log the whole of it.
        _finish(ctx, job_id, "failed", f"Internal error on the node ({type(exc).__name__}).")


def _finish(ctx: NodeContext, job_id: str, status: str, error: str | None) -> None:
    with ctx.db.write_session() as session:
        job = session.get(JobRow, job_id)
        if job is None:
            return
        job.status = status
        job.error = error
        job.finished_at = utcnow()
        model = session.get(ModelRow, job.model_id)
        if model is not None and model.busy_job_id == job_id:
            model.busy_job_id = None
        session.commit()


@dataclass
class _Run:
    """What the running job tracks between the trainer's callbacks."""

    params: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    step: int = 0
    steps_since_checkpoint: int = 0
    last_write: float = 0.0
    cancel: bool = False

    @property
    def expected_samples(self) -> int:
        return fits.expected_samples(self.params, self.step)


def _train(ctx: NodeContext, job_id: str, stopping: threading.Event) -> str:
    with ctx.db.write_session() as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        user = session.get(UserRow, job.owner_id)
        assert user is not None
        model = get_model(session, user=user, model_id=job.model_id)
        run = _Run(params=dict(job.params))
        p = run.params
        plan = fits.plan_fit(
            session,
            ctx.files,
            ctx.arrays,
            user=user,
            model=model,
            x_id=p["x"],
            y_id=p["y"],
            max_iter=p["max_iter"],
            batch_size=p["batch_size"],
            validation_split=p["validation_split"],
            target_epsilon=None,
        )
        trainer = load_trainer(ctx.files, model, device=ctx.settings.device)
        cart = load_cart(ctx.files, model)
        delta = get_node(session).delta
        user_id, model_id = user.id, model.id

    sigma, q, key = float(p["sigma"]), float(p["q"]), plan.pair.key
    cart.ensure_source(key, plan.pair.n_asset_rows)
    cart.mark_pool(key, plan.train_rows)

    def should_stop() -> bool:
        return stopping.is_set() or run.cancel

    def on_step(info: StepInfo) -> None:
        cart.add_sampled(key, q=q, sigma=sigma, steps=1)
        run.step += 1
        run.steps_since_checkpoint += 1
        now = time.monotonic()
        if now - run.last_write >= PROGRESS_EVERY_S:
            run.last_write = now
            run.cancel = _write_progress(ctx, job_id, run, epoch=info.epoch - 1)

    def on_epoch(info: EpochInfo) -> None:
        nonlocal cart
        with ctx.db.write_session() as session:
            model = session.get(ModelRow, model_id, with_for_update=True)
            user = session.get(UserRow, user_id)
            job = session.get(JobRow, job_id)
            assert model is not None and user is not None and job is not None
            save_checkpoint(
                ctx.files, model, trainer=trainer, cart=cart, steps_added=run.steps_since_checkpoint
            )
            run.steps_since_checkpoint = 0
            metrics: dict[str, Any] = {}
            if info.validation is not None:
                metrics, cart = fits.release_validation(
                    session,
                    ctx.files,
                    user=user,
                    model=model,
                    cart=cart,
                    metrics=info.validation,
                    params=p,
                    pair=plan.pair,
                    val_rows=plan.val_rows,
                    delta=delta,
                    epoch=info.epoch,
                )
            job.epoch, job.step, job.expected_samples = info.epoch, run.step, run.expected_samples
            session.add(
                JobEpochRow(
                    job_id=job_id,
                    epoch=info.epoch,
                    step=run.step,
                    expected_samples=run.expected_samples,
                    elapsed=time.monotonic() - run.started,
                    metrics=metrics,
                )
            )
            session.commit()
            run.cancel = job.cancel_requested
        _prune(ctx, model_id)

    result = trainer.fit(
        plan.pair.x.array,
        plan.pair.y.array,
        train_rows=plan.train_rows,
        val_rows=plan.val_rows if len(plan.val_rows) else None,
        epochs=p["max_iter"],
        batch_size=p["batch_size"],
        noise_multiplier=sigma,
        on_step=on_step,
        on_epoch=on_epoch,
        should_stop=should_stop,
    )
    if run.steps_since_checkpoint:  # stopped mid-epoch: keep what was trained, and its cost
        with ctx.db.write_session() as session:
            model = session.get(ModelRow, model_id, with_for_update=True)
            assert model is not None
            save_checkpoint(
                ctx.files, model, trainer=trainer, cart=cart, steps_added=run.steps_since_checkpoint
            )
            session.commit()
        _prune(ctx, model_id)
    _write_progress(ctx, job_id, run, epoch=None)
    if stopping.is_set():
        raise VeilError("The node shut down during training; the model keeps its last checkpoint.")
    return "cancelled" if result.stopped else "done"


def _write_progress(ctx: NodeContext, job_id: str, run: _Run, *, epoch: int | None) -> bool:
    """Record the step count; returns whether a cancel was asked for."""
    with ctx.db.write_session() as session:
        job = session.get(JobRow, job_id)
        if job is None:
            return True
        job.step, job.expected_samples = run.step, run.expected_samples
        if epoch is not None:
            job.epoch = epoch
        session.commit()
        return job.cancel_requested


def _prune(ctx: NodeContext, model_id: str) -> None:
    with ctx.db.session() as session:
        model = session.get(ModelRow, model_id)
        if model is not None:
            prune_old_versions(ctx.files, model)
