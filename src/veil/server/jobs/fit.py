"""Run one `fit` job: DP-SGD over the Poisson pool, cart updated step by step.

The cart gains one Poisson-subsampled Gaussian step per step (O(1)). At each epoch's
end the weights and the cart are checkpointed together; if the fit holds out
validation rows, their noised loss and accuracy are released then, charging the
model's uncharged cart (they reveal the model) with the validation rows' own cost
added per row. If the budget cannot pay, the metrics are withheld and training goes on.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from veil._exceptions import BudgetExceeded, VeilError
from veil.engine import EpochInfo, StepInfo
from veil.nn.spec import ModelSpec
from veil.privacy import Cart, RdpCurve
from veil.server.context import NodeContext
from veil.server.db.base import utcnow
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.models import JobEpochRow, JobRow, ModelRow
from veil.server.services import ledger
from veil.server.services.checkpoints import (
    load_cart,
    load_trainer,
    prune_old_versions,
    save_checkpoint,
)
from veil.server.services.fits import VAL_RELEASES_PER_EPOCH, plan_fit
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
        _finish(ctx, job_id, "failed", f"{type(exc).__name__}: {exc}")


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


def _train(ctx: NodeContext, job_id: str, stopping: threading.Event) -> str:
    with ctx.db.write_session() as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        user = session.get(UserRow, job.owner_id)
        assert user is not None
        model = get_model(session, user=user, model_id=job.model_id)
        p: dict[str, Any] = dict(job.params)
        plan = plan_fit(
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
            check=False,
        )
        spec = ModelSpec.from_dict(model.spec)
        trainer = load_trainer(ctx.files, model, device=ctx.settings.device)
        cart = load_cart(ctx.files, model)
        delta = get_node(session).delta
        user_id, model_id = user.id, model.id

    sigma, q, key = float(p["sigma"]), float(p["q"]), plan.pair.key
    cart.ensure_source(key, plan.pair.n_asset_rows)
    cart.mark_pool(key, plan.train_rows)
    state = {"step": 0, "samples": 0, "last_write": 0.0, "steps_since_ckpt": 0, "cancel": False}
    rng = np.random.default_rng(secrets.randbits(128))
    started = time.monotonic()

    def should_stop() -> bool:
        return stopping.is_set() or bool(state["cancel"])

    def on_step(info: StepInfo) -> None:
        cart.add_sampled(key, q=q, sigma=sigma, steps=1)
        state["step"] += 1
        state["samples"] = info.samples_seen
        state["steps_since_ckpt"] += 1
        now = time.monotonic()
        if now - state["last_write"] >= PROGRESS_EVERY_S:
            state["last_write"] = now
            state["cancel"] = _write_progress(ctx, job_id, epoch=info.epoch - 1, **_counts(state))

    def on_epoch(info: EpochInfo) -> None:
        nonlocal cart
        with ctx.db.write_session() as session:
            model = session.get(ModelRow, model_id, with_for_update=True)
            assert model is not None
            user = session.get(UserRow, user_id)
            metrics: dict[str, Any] = {}
            if len(plan.val_rows):
                metrics, cart = _release_validation(
                    session,
                    user,
                    model,
                    cart,
                    info,
                    plan.val_rows,
                    key,
                    float(p["val_sigma"]),
                    spec,
                    delta,
                    rng,
                )
            save_checkpoint(
                ctx.files, model, trainer=trainer, cart=cart, steps_added=state["steps_since_ckpt"]
            )
            if metrics.get("released"):
                model.charged_curve = model.cart_curve
            state["steps_since_ckpt"] = 0
            job = session.get(JobRow, job_id)
            assert job is not None
            job.epoch, job.step, job.samples_seen = info.epoch, state["step"], state["samples"]
            session.add(
                JobEpochRow(
                    job_id=job_id,
                    epoch=info.epoch,
                    step=state["step"],
                    samples_seen=state["samples"],
                    elapsed=time.monotonic() - started,
                    metrics=metrics,
                )
            )
            session.commit()
            state["cancel"] = job.cancel_requested
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
    if state["steps_since_ckpt"]:  # stopped mid-epoch: keep what was trained, and its cost
        with ctx.db.write_session() as session:
            model = session.get(ModelRow, model_id, with_for_update=True)
            assert model is not None
            save_checkpoint(
                ctx.files, model, trainer=trainer, cart=cart, steps_added=state["steps_since_ckpt"]
            )
            session.commit()
        _prune(ctx, model_id)
    _write_progress(ctx, job_id, epoch=None, **_counts(state))
    if stopping.is_set():
        raise VeilError("The node shut down during training; the model keeps its last checkpoint.")
    return "cancelled" if result.stopped else "done"


def _counts(state: dict[str, Any]) -> dict[str, int]:
    return {"step": int(state["step"]), "samples": int(state["samples"])}


def _write_progress(
    ctx: NodeContext, job_id: str, *, epoch: int | None, step: int, samples: int
) -> bool:
    """Record the step count; returns whether a cancel was asked for."""
    with ctx.db.write_session() as session:
        job = session.get(JobRow, job_id)
        if job is None:
            return True
        job.step, job.samples_seen = step, samples
        if epoch is not None:
            job.epoch = epoch
        session.commit()
        return job.cancel_requested


def _prune(ctx: NodeContext, model_id: str) -> None:
    with ctx.db.session() as session:
        model = session.get(ModelRow, model_id)
        if model is not None:
            prune_old_versions(ctx.files, model)


def _release_validation(
    session: Session,
    user: UserRow,
    model: ModelRow,
    cart: Cart,
    info: EpochInfo,
    val_rows: np.ndarray,
    key: str,
    sigma: float,
    spec: ModelSpec,
    delta: float,
    rng: np.random.Generator,
) -> tuple[dict[str, Any], Cart]:
    """Noise and release this epoch's validation metrics, or withhold them."""
    n_val = len(val_rows)
    with_val = cart.copy()
    with_val.add_gaussian_rows(key, val_rows, sigma=sigma, count=VAL_RELEASES_PER_EPOCH)
    increment = with_val.curve() - RdpCurve.from_list(model.charged_curve)
    loss_std = sigma * spec.loss_bound / n_val
    noised: dict[str, Any] = {
        "val_loss": float(info.val_loss + rng.normal(0.0, loss_std)),
        "val_loss_std": loss_std,
    }
    if info.val_accuracy is not None:
        noised["val_accuracy"] = float(info.val_accuracy + rng.normal(0.0, sigma / n_val))
        noised["val_accuracy_std"] = sigma / n_val
    try:
        ledger.charge(
            session,
            user=user,
            curve_added=increment,
            delta=delta,
            kind="metrics",
            mechanism="gaussian",
            params={
                "sigma": sigma,
                "n_rows": n_val,
                "epoch": info.epoch,
                "model_version": model.version + 1,  # the checkpoint written with it
            },
            model_id=model.id,
            result=noised,
        )
    except BudgetExceeded as exc:
        return {"released": False, "withheld": str(exc)}, cart
    return {"released": True, **noised}, with_val
