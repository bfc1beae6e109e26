"""Plan, quote, submit, watch and cancel `fit` jobs.

A fit's training rows form a Poisson pool (q = batch_size / n_train); the last
`validation_split` of the rows are held out (as Keras does) and only ever touched by
the noised validation metrics, which are charged per row (parallel composition). Their
noise is the least that keeps the held-out rows' cost under the training rows' cost at
every Rényi order, so validation adds nothing to what publishing the model costs.
Everything is checked before the job is queued, so bad input never starts training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from veil._exceptions import BudgetExceeded, Conflict, NotFound, ValidationError
from veil.engine import RowMetrics
from veil.nn.spec import ModelSpec
from veil.privacy import (
    Cart,
    Quote,
    RdpCurve,
    calibrate_fit,
    dominated_gaussian_sigma,
    poisson_gaussian,
    quote_fit,
)
from veil.server.db.base import as_utc
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.models import JobEpochRow, JobRow, ModelRow
from veil.server.services import ledger
from veil.server.services.checkpoints import load_cart
from veil.server.services.data import Pair, check_public, resolve_pair, split_rows
from veil.server.services.models import cart_epsilon, get_model
from veil.server.services.node import get_node
from veil.server.services.releases import metric_queries, release_metrics, released_values
from veil.server.storage.arrays import ArrayStore
from veil.server.storage.files import NodeFiles

__all__ = [
    "ACTIVE",
    "FitPlan",
    "cancel_fit",
    "fail_interrupted_jobs",
    "plan_fit",
    "progress",
    "release_validation",
    "submit_fit",
]

ACTIVE = ("queued", "running")
VAL_RELEASES_PER_EPOCH = 2  # validation loss and accuracy


@dataclass(frozen=True)
class FitPlan:
    """A checked fit and its price, in the words the user sees: `spent` (the budget spent
    now), `cart` (what publishing the model now would add to it), `cost` (what this fit
    adds to that) and `cart_after` (what publishing right after the fit would add)."""

    pair: Pair
    train_rows: np.ndarray
    val_rows: np.ndarray
    quote: Quote
    params: dict[str, Any]
    spent: float
    cart: float
    cost: float
    cart_after: float


def plan_fit(
    session: Session,
    files: NodeFiles,
    arrays: ArrayStore,
    *,
    user: UserRow,
    model: ModelRow,
    x_id: str,
    y_id: str,
    max_iter: int,
    batch_size: int,
    validation_split: float,
    target_epsilon: float | None,
) -> FitPlan:
    """Check a planned fit and price it; with `target_epsilon`, pick sigma for it."""
    for name, value in (("max_iter", max_iter), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValidationError(f"{name} must be an int >= 1. Received: {name}={value!r}")
    spec = ModelSpec.from_dict(model.spec)
    pair = resolve_pair(session, arrays, user=user, x_id=x_id, y_id=y_id)
    train_rows, val_rows = split_rows(pair.rows, validation_split)
    if len(np.unique(pair.rows)) != len(pair.rows):
        raise ValidationError(
            "fit samples rows from a pool in which each row appears once. Received: a "
            "slice that repeats rows"
        )
    if batch_size > len(train_rows):
        raise ValidationError(
            f"batch_size must be at most the {len(train_rows)} training rows. "
            f"Received: batch_size={batch_size}"
        )
    check_public(spec, pair)
    cart = load_cart(files, model)
    cart.ensure_source(pair.key, pair.n_asset_rows)
    delta = get_node(session).delta
    spent = ledger.spent_curve(session, user_id=user.id)
    common = dict(
        n_rows_train=len(train_rows),
        train_rows=train_rows,
        batch_size=batch_size,
        epochs=max_iter,
        val_releases_per_epoch=VAL_RELEASES_PER_EPOCH,
        delta=delta,
        # Priced on top of the ledger (less what this model already paid), so the
        # figures say what the fit adds to the epsilon spent.
        base=spent - RdpCurve.from_list(model.charged_curve),
    )
    if target_epsilon is None:
        sigma = spec.noise_multiplier
    else:  # validation rows are priced under the training rows, so they do not move sigma
        sigma = calibrate_fit(
            cart, pair.key, target_epsilon=target_epsilon, val_rows=None, **common
        ).sigma
    steps = max_iter * math.ceil(len(train_rows) / batch_size)
    q = batch_size / len(train_rows)
    val_sigma = None
    if len(val_rows):
        val_sigma = dominated_gaussian_sigma(
            poisson_gaussian(q, sigma, steps), count=VAL_RELEASES_PER_EPOCH * max_iter
        )
    quote = quote_fit(
        cart,
        pair.key,
        sigma=sigma,
        val_sigma=val_sigma,
        val_rows=val_rows if len(val_rows) else None,
        **common,
    )
    params = {
        "x": x_id,
        "y": y_id,
        "max_iter": max_iter,
        "batch_size": batch_size,
        "validation_split": validation_split,
        "sigma": quote.sigma,
        "val_sigma": val_sigma,
        "q": quote.q,
        "steps": quote.steps,
        "target_epsilon": target_epsilon,
        "quoted_cost": quote.epsilon_added,
        "n_train": len(train_rows),
    }
    spent_now = spent.epsilon(delta)
    return FitPlan(
        pair=pair,
        train_rows=train_rows,
        val_rows=val_rows,
        quote=quote,
        params=params,
        spent=spent_now,
        cart=quote.epsilon_after - quote.epsilon_added - spent_now,
        cost=quote.epsilon_added,
        cart_after=quote.epsilon_after - spent_now,
    )


def submit_fit(
    session: Session,
    files: NodeFiles,
    arrays: ArrayStore,
    *,
    user: UserRow,
    model_id: str,
    **plan_args: Any,
) -> JobRow:
    """Check and price the fit, then queue it; the model is busy until the job ends."""
    model = get_model(session, user=user, model_id=model_id)
    if model.busy_job_id is not None:
        raise Conflict(
            f"Model {model_id} is training (job {model.busy_job_id}); wait or cancel it.",
            job_id=model.busy_job_id,
        )
    plan = plan_fit(session, files, arrays, user=user, model=model, **plan_args)
    job = JobRow(
        model_id=model.id,
        owner_id=user.id,
        kind="fit",
        status="queued",
        params=plan.params,
        max_iter=plan.params["max_iter"],
        steps=plan.quote.steps,
    )
    session.add(job)
    session.flush()
    model.busy_job_id = job.id
    session.commit()
    return job


def latest_job(session: Session, *, model_id: str) -> JobRow | None:
    query = (
        select(JobRow)
        .where(JobRow.model_id == model_id)
        .order_by(JobRow.created_at.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def cancel_fit(session: Session, *, user: UserRow, model_id: str) -> JobRow:
    model = get_model(session, user=user, model_id=model_id)
    job = latest_job(session, model_id=model.id)
    if job is None:
        raise NotFound(f"Model {model_id} has no training job.", model_id=model_id)
    if job.status in ACTIVE:
        job.cancel_requested = True
        session.commit()
    return job


def progress(session: Session, *, user: UserRow, model_id: str) -> dict[str, Any]:
    """Status of the model's latest job; only released (noised, charged) metrics."""
    model = get_model(session, user=user, model_id=model_id)
    delta = get_node(session).delta
    job = latest_job(session, model_id=model.id)
    spent = ledger.spent_curve(session, user_id=user.id)
    out: dict[str, Any] = {
        "model_id": model.id,
        "spent": spent.epsilon(delta),
        "cart": cart_epsilon(spent, model, delta=delta),
        "total_steps": model.steps,
    }
    if job is None:
        return {**out, "status": "idle", "job_id": None, "metrics": []}
    epochs = session.scalars(
        select(JobEpochRow).where(JobEpochRow.job_id == job.id).order_by(JobEpochRow.epoch)
    )
    start = job.started_at
    end = job.finished_at or datetime.now(UTC)
    elapsed = (as_utc(end) - as_utc(start)).total_seconds() if start else 0.0
    return {
        **out,
        "job_id": job.id,
        "status": job.status,
        "epoch": job.epoch,
        "max_iter": job.max_iter,
        "step": job.step,
        "steps": job.steps,
        "expected_samples": job.expected_samples,
        "elapsed": round(elapsed, 3),
        "sigma": job.params.get("sigma"),
        "error": job.error,
        "metrics": [{"epoch": e.epoch, **e.metrics} for e in epochs],
    }


def expected_samples(params: dict[str, Any], step: int) -> int:
    """Rows a fit's first `step` steps sample on average (step x q x n_train): public.
    The exact count depends on which rows Poisson sampling drew, and is never shown."""
    return round(step * params["q"] * params["n_train"])


def release_validation(
    session: Session,
    files: NodeFiles,
    *,
    user: UserRow,
    model: ModelRow,
    cart: Cart,
    metrics: RowMetrics,
    params: dict[str, Any],
    pair: Pair,
    val_rows: np.ndarray,
    delta: float,
    epoch: int,
) -> tuple[dict[str, Any], Cart]:
    """Release one epoch's validation loss and accuracy, or withhold them.

    `cart` is the model's cart as just checkpointed. The metrics are released at the
    fit's `val_sigma`, which keeps the held-out rows' cost under the training rows'
    (so validating adds nothing to the model's cost); if the budget cannot pay for the
    model's cart, they are withheld and training goes on. Returns the progress entry
    and the model's cart after it.
    """
    queries = metric_queries(
        metrics, source=pair.key, n_source_rows=pair.n_asset_rows, rows=val_rows, prefix="val_"
    )
    try:
        outcome = release_metrics(
            session,
            files,
            user=user,
            model=model,
            cart=cart,
            queries=queries,
            sigma=float(params["val_sigma"]),
            delta=delta,
            params={"epoch": epoch, "n_rows": len(val_rows), "model_version": model.version},
        )
    except BudgetExceeded as exc:
        return {"released": False, "withheld": str(exc)}, cart
    assert outcome.release.result is not None and outcome.cart is not None
    entry = {"released": True, "release_id": outcome.release.id}
    return {**entry, **released_values(outcome.release.result)}, outcome.cart


def fail_interrupted_jobs(session: Session) -> int:
    """After a restart of an embedded node, no job of the old process is running."""
    jobs = list(session.scalars(select(JobRow).where(JobRow.status.in_(ACTIVE))))
    for job in jobs:
        job.status = "failed"
        job.error = "The node restarted during training; the model keeps its last checkpoint."
        job.finished_at = datetime.now(UTC)
        model = session.get(ModelRow, job.model_id)
        if model is not None and model.busy_job_id == job.id:
            model.busy_job_id = None
    session.commit()
    return len(jobs)
