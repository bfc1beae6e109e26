"""Run one `fit` job: DP-SGD over the Poisson pool, every step charged to the cart, resumable.

The cart is charged one Poisson-subsampled Gaussian per step trained, added up before
each checkpoint (`_Run.charge`: O(1) however many steps); on a dataset whose
unit is the data subject, the steps sample subjects and clip each one's rows together.
The weights and the cart are checkpointed together at each epoch's end and every
`checkpoint_every_seconds`; at an epoch's end the validation metrics, if the fit holds
out rows, go through the release path (`fits.release_validation`, which owns the rule
for withholding them) in the same transaction; the last epoch's transaction also ends
the job. The job row records how many of its steps the model's checkpoint holds
(`checkpoint_step`). The job trains the model kept in memory for steps
(`services.live_models`) when this process has it, and leaves it there when done.

A job that resumes (its worker died, the node restarted) loads the model's checkpoint
and runs the remaining steps from there, with fresh secure noise: steps trained after
the last checkpoint are lost with their worker and trained again, never counted twice,
so the cart at the end is that of an uninterrupted run.

Every write checks the claim's fencing token first (`job_queue.fenced_job`): a worker
that lost its lease stops without writing. Checkpoint files are written before each
short transaction, never inside one. Progress shows public counts only: steps, epochs
and the expected number of rows sampled, never the exact Poisson batch sizes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from veil._exceptions import Conflict, ServerError, VeilError
from veil.engine import DPTrainer, EpochInfo, StepInfo
from veil.privacy import Cart
from veil.server.context import NodeContext
from veil.server.db.base import utcnow
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.models import JobEpochRow, JobRow, ModelRow
from veil.server.jobs.worker import Lease
from veil.server.services import fits, job_queue
from veil.server.services.checkpoints import (
    load_cart,
    load_trainer,
    prune_old_versions,
    stage_checkpoint,
)
from veil.server.services.job_queue import Claim, LeaseLost
from veil.server.services.live_models import LiveModel
from veil.server.services.models import get_model
from veil.server.services.node import get_node
from veil.server.services.progress import expected_samples

__all__ = ["run_fit_job"]

log = logging.getLogger("veil.jobs")

PROGRESS_EVERY_S = 0.5


class _Interrupted(Exception):
    """This process is stopping: the job goes back to the queue, to resume elsewhere."""


def run_fit_job(ctx: NodeContext, lease: Lease, stopping: threading.Event) -> None:
    """Run (or resume) a claimed job; every outcome is recorded on the job row."""
    claim = lease.claim
    try:
        try:
            outcome = _train(ctx, lease, stopping)
        except _Interrupted:
            job_queue.return_to_queue(ctx.db, claim)
        except VeilError as exc:
            _finish(ctx, claim, "failed", f"{type(exc).__name__}: {exc}")
        except LeaseLost:
            raise
        except Exception:  # the job must end recorded, whatever happened
            error = ServerError.unexpected()
            log.exception(
                "fit job %s failed (reference %s)", claim.job_id, error.detail["reference"]
            )
            _finish(ctx, claim, "failed", str(error))
        else:
            if outcome is not None:
                _finish(ctx, claim, outcome, None)
    except LeaseLost:
        log.warning("job %s: lease lost; it resumes on another worker", claim.job_id)


def _finish(ctx: NodeContext, claim: Claim, status: str, error: str | None) -> None:
    with ctx.db.write_session() as session:
        job = job_queue.fenced_job(session, claim)
        _end(session, job, status, error)
        model_id = job.model_id
        session.commit()
    ctx.signals.notify(model_id)


def _end(
    session: Session, job: JobRow, status: str, error: str | None, model: ModelRow | None = None
) -> None:
    job.status = status
    job.error = error
    job.finished_at = utcnow()
    job.lease_expires_at = None
    job_queue.free_model(session, job, model)


@dataclass
class _Run:
    """What the running job tracks between the trainer's callbacks."""

    ctx: NodeContext
    claim: Claim
    params: dict[str, Any]
    plan: fits.FitRows
    user_id: str
    model_id: str
    trainer: DPTrainer
    cart: Cart
    version: int  # the model version of the last checkpoint
    saved_step: int  # this job's steps in that checkpoint
    step: int = 0  # this job's steps in the trainer now
    uncharged: int = 0  # of those, steps not yet added to `cart` (added before any use)
    started: float = field(default_factory=time.monotonic)
    last_write: float = field(default_factory=time.monotonic)  # the first after 0.5 s
    last_checkpoint: float = field(default_factory=time.monotonic)
    cancel: bool = False

    @property
    def expected_samples(self) -> int:
        return expected_samples(self.params, self.step)

    def charge(self) -> Cart:
        """The cart with every trained step in it: one addition for the steps since the
        last (each is the same Poisson-subsampled Gaussian), before the cart is saved,
        released against or kept."""
        if self.uncharged:
            q, sigma = float(self.params["q"]), float(self.params["sigma"])
            self.cart.add_sampled(self.plan.pair.key, q=q, sigma=sigma, steps=self.uncharged)
            self.uncharged = 0
        return self.cart


def _load(ctx: NodeContext, claim: Claim) -> _Run | None:
    """The job's rows, and the model at its checkpoint; None if it was cancelled."""
    with ctx.db.session() as session:
        job = session.get(JobRow, claim.job_id)
        assert job is not None
        if job.cancel_requested:
            return None
        user = session.get(UserRow, job.owner_id)
        assert user is not None
        model = get_model(session, user=user, model_id=job.model_id)
        if model.busy_job_id != job.id:
            raise Conflict(f"Model {model.id} is not held by this job.", model_id=model.id)
        p = dict(job.params)
        # Priced and checked when it was queued: the job needs only its rows again.
        plan = fits.fit_rows(
            session,
            ctx.arrays,
            user=user,
            x_id=p["x"],
            y_id=p["y"],
            validation_split=p["validation_split"],
            rows_per_subject=p.get("rows_per_subject"),
        )
        with ctx.live.lock(user.id, model.id):  # a step or evaluation in flight ends first
            live = ctx.live.take(model.id, model.version)
        if live is None:
            live = LiveModel(
                version=model.version,
                trainer=load_trainer(session, ctx.files, model, device=ctx.settings.device),
                cart=load_cart(session, ctx.files, model),
            )
        return _Run(
            ctx=ctx,
            claim=claim,
            params=p,
            plan=plan,
            user_id=user.id,
            model_id=model.id,
            trainer=live.trainer,
            cart=live.cart,
            version=model.version,
            saved_step=job.checkpoint_step,
            step=job.checkpoint_step,
        )


def _train(ctx: NodeContext, lease: Lease, stopping: threading.Event) -> str | None:
    """Train the job's remaining steps; its outcome, or None if the last checkpoint
    recorded it (the job ended in the transaction that holds its last steps)."""
    run = _load(ctx, lease.claim)
    if run is None:
        return "cancelled"
    # No wake-up for "it runs": its first progress write (after PROGRESS_EVERY_S) is one,
    # and a short fit's answers would share the interpreter with its training.
    p, plan, key = run.params, run.plan, run.plan.pair.key
    sigma = float(p["sigma"])
    units = plan.pair.units
    run.cart.ensure_source(key, units.n)
    run.cart.mark_pool(key, plan.train_units)
    checkpoint_every = ctx.settings.checkpoint_every_seconds
    per_epoch = p["steps"] // p["max_iter"]

    def should_stop() -> bool:
        return stopping.is_set() or lease.lost.is_set() or run.cancel

    def on_step(info: StepInfo) -> None:
        run.uncharged += info.step - run.step
        run.step = info.step
        now = time.monotonic()
        if now - run.last_write >= PROGRESS_EVERY_S:
            run.last_write = now
            run.cancel = _write_progress(run, epoch=info.epoch - 1)
        ends_epoch = info.step % per_epoch == 0  # on_epoch checkpoints it
        if now - run.last_checkpoint >= checkpoint_every and not ends_epoch:
            _checkpoint(run)

    last: list[EpochInfo] = []  # the last epoch's end, checkpointed with the job's

    def on_epoch(info: EpochInfo) -> None:
        if info.epoch == p["max_iter"]:
            last.append(info)
        else:
            _checkpoint(run, epoch=info)

    result = run.trainer.fit(
        plan.pair.x.array,
        plan.pair.y.array,
        train_rows=plan.train_rows,
        # Whether to validate is public (held-out units); by subject with
        # rows_per_subject, so is how many rows validation evaluates.
        val_rows=plan.val_rows if len(plan.val_units) else None,
        epochs=p["max_iter"],
        batch_size=p["batch_size"],
        noise_multiplier=sigma,
        on_step=on_step,
        on_epoch=on_epoch,
        should_stop=should_stop,
        start_step=run.saved_step,
        subjects=units.ranks,
        train_subjects=plan.train_units if units.by_subject else None,
        rows_per_subject=plan.rows_per_subject,
        val_subjects=plan.val_units if units.by_subject else None,
    )
    if lease.lost.is_set():
        raise LeaseLost(lease.claim.job_id)
    if last:  # every step trained
        _checkpoint(run, epoch=last[0], ending="done")
        return None
    if run.step > run.saved_step:  # stopped mid-epoch: keep what was trained, and its cost
        _checkpoint(run)
    # Every step is now in a checkpoint, whose transaction recorded the job's progress.
    if result.stopped and not run.cancel:
        raise _Interrupted
    _keep(run)
    return "cancelled" if result.stopped else "done"


def _keep(run: _Run) -> None:
    """The trainer is the model at its last checkpoint: the next step or fit here uses it."""
    live = LiveModel(version=run.version, trainer=run.trainer, cart=run.charge())
    with run.ctx.live.lock(run.user_id, run.model_id):
        run.ctx.live.put(run.model_id, live)


def _checkpoint(run: _Run, *, epoch: EpochInfo | None = None, ending: str | None = None) -> None:
    """Make the trainer's state (and, at an epoch's end, its validation release) the
    model's next version, and record how many of this job's steps it holds; `ending`
    ends the job in the same transaction, with that status."""
    ctx = run.ctx
    staged = stage_checkpoint(ctx.files, run.model_id, trainer=run.trainer, cart=run.charge())
    try:
        with ctx.db.write_session() as session:
            job = job_queue.fenced_job(session, run.claim)
            model = session.get(ModelRow, run.model_id, with_for_update=True)
            assert model is not None
            if model.version != run.version:  # nothing else may change a training model
                raise Conflict(f"Model {model.id} changed during training.", model_id=model.id)
            staged.commit(session, ctx.files, model, steps_added=run.step - run.saved_step)
            job.checkpoint_step = job.step = run.step
            job.expected_samples = run.expected_samples
            if epoch is not None:
                _record_epoch(session, run, job=job, model=model, epoch=epoch)
            if ending is not None:
                _end(session, job, ending, None, model)
            session.commit()
            run.cancel = run.cancel or job.cancel_requested
    except BaseException:
        staged.discard()
        raise
    run.saved_step, run.version = run.step, model.version
    run.last_checkpoint = time.monotonic()
    if ending is not None:
        _keep(run)
    ctx.signals.notify(run.model_id)
    prune_old_versions(ctx.files, model.id, model.version)


def _record_epoch(
    session: Session, run: _Run, *, job: JobRow, model: ModelRow, epoch: EpochInfo
) -> None:
    metrics: dict[str, Any] = {}
    if epoch.validation is not None:
        user = session.get(UserRow, run.user_id)
        assert user is not None
        metrics, run.cart = fits.release_validation(
            session,
            run.ctx.files,
            user=user,
            model=model,
            cart=run.cart,
            metrics=epoch.validation,
            rows=epoch.validation_rows,
            real=epoch.validation_real,
            params=run.params,
            plan=run.plan,
            delta=get_node(session).delta,  # the node's now: the admin may change it
            epoch=epoch.epoch,
        )
    job.epoch = epoch.epoch
    session.add(
        JobEpochRow(
            job_id=job.id,
            epoch=epoch.epoch,
            step=run.step,
            expected_samples=run.expected_samples,
            elapsed=time.monotonic() - run.started,
            metrics=metrics,
        )
    )


def _write_progress(run: _Run, *, epoch: int | None) -> bool:
    """Record the step count; returns whether a cancel was asked for."""
    with run.ctx.db.write_session() as session:
        job = job_queue.fenced_job(session, run.claim)
        job.step, job.expected_samples = run.step, run.expected_samples
        if epoch is not None:
            job.epoch = epoch
        session.commit()
        cancel = job.cancel_requested
    run.ctx.signals.notify(run.model_id)
    return cancel
