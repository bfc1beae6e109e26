"""Plan, quote, submit, watch and cancel `fit` jobs.

A fit's training rows form a Poisson pool (q = batch_size / n_train); the last
`validation_split` of the rows are held out (as Keras does) and only ever touched by
the noised validation metrics, which are charged per row (parallel composition). Their
noise is the least that keeps the held-out rows' cost under the training rows' cost at
every Rényi order, so validation adds nothing to what publishing the model costs.
Everything is checked before the job is queued, so bad input never starts training: the
node's limit on one fit's steps, and the budget, since a fit whose weights the user
could not afford to publish would only occupy a worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
from veil.server.db.engine import Database
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.models import JobRow, ModelRow
from veil.server.services import job_queue, ledger, quotas
from veil.server.services.checkpoints import load_cart, loading_version
from veil.server.services.data import Pair, check_public, resolve_pair, split_rows
from veil.server.services.models import get_model
from veil.server.services.node import get_node
from veil.server.services.releases import metric_queries, release_metrics, released_values
from veil.server.services.units import per_subject
from veil.server.settings import MAX_DB_INT
from veil.server.storage.arrays import ArrayStore
from veil.server.storage.files import NodeFiles

__all__ = [
    "FitPlan",
    "FitRows",
    "cancel",
    "cancel_fit",
    "fit_rows",
    "latest_job",
    "plan_fit",
    "quote",
    "release_validation",
    "submit_fit",
]

VAL_RELEASES_PER_EPOCH = 2  # validation loss and accuracy


@dataclass(frozen=True)
class FitRows:
    """What a fit trains and validates on: all a running job needs of its plan."""

    pair: Pair
    train_rows: np.ndarray  # rows the engine trains on (private where the unit is a subject)
    val_rows: np.ndarray
    train_units: np.ndarray  # the Poisson pool in the cart: rows, or subject ranks (public)
    val_units: np.ndarray
    rows_per_subject: int | None


@dataclass(frozen=True)
class FitPlan(FitRows):
    """A checked fit and its price, in the words the user sees: `spent` (the budget spent
    now), `cart` (what publishing the model now would add to it), `cost` (what this fit
    adds to that) and `cart_after` (what publishing right after the fit would add)."""

    quote: Quote
    params: dict[str, Any]
    spent: float
    cart: float
    cost: float
    cart_after: float
    model_version: int  # the model's version the quote was priced on


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DB_INT:
        raise ValidationError(
            f"{name} must be an int in [1, {MAX_DB_INT}]. Received: {name}={value!r}", field=name
        )
    return value


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
    max_steps: int | None = None,
    rows_per_subject: int | None = None,
) -> FitPlan:
    """Check a planned fit and price it; with `target_epsilon`, pick sigma for it.

    `max_steps` (the node's limit, for a fit not yet queued) refuses a longer fit
    before anything is priced. On a dataset whose unit is the subject, everything is
    counted in subjects (see `_split`) and `rows_per_subject` caps a subject's rows per step.
    """
    max_iter, batch_size = _count("max_iter", max_iter), _count("batch_size", batch_size)
    spec = ModelSpec.from_dict(model.spec)
    rows = fit_rows(
        session,
        arrays,
        user=user,
        x_id=x_id,
        y_id=y_id,
        validation_split=validation_split,
        rows_per_subject=rows_per_subject,
    )
    pair, train_units, val_units = rows.pair, rows.train_units, rows.val_units
    unit = pair.units.name
    if batch_size > len(train_units):
        raise ValidationError(
            f"batch_size must be at most the {len(train_units)} training {unit}s. "
            f"Received: batch_size={batch_size}"
        )
    steps = max_iter * math.ceil(len(train_units) / batch_size)
    if max_steps is not None and steps > max_steps:
        raise ValidationError(
            f"A fit on this node may run at most {max_steps} steps. Received: max_iter="
            f"{max_iter} epochs of {math.ceil(len(train_units) / batch_size)} steps "
            f"({len(train_units)} training {unit}s, batch_size={batch_size}) = {steps} steps",
            field="max_iter",
            steps=steps,
            max_steps=max_steps,
        )
    check_public(spec, pair)
    with loading_version(session, model_id=model.id, version=model.version):
        cart = load_cart(session, files, model)
    cart.ensure_source(pair.key, pair.units.n)
    delta = get_node(session).delta
    spent = ledger.spent_curve(session, user_id=user.id)
    common = dict(
        n_rows_train=len(train_units),
        train_rows=train_units,
        batch_size=batch_size,
        epochs=max_iter,
        val_releases_per_epoch=VAL_RELEASES_PER_EPOCH,
        delta=delta,
        # Priced on top of the ledger (less what this model already paid), so the
        # figures say what the fit adds to the epsilon spent.
        base=spent - RdpCurve.from_list(model.charged_curve),
    )
    q = batch_size / len(train_units)

    def val_sigma_of(sigma: float) -> float:
        # Each validation release no costlier than training, per row: held-out rows that
        # cost nothing yet add nothing beside the pool (parallel composition); rows that
        # were pooled or released before add to their own cost, which the quote counts.
        training = poisson_gaussian(q, sigma, steps)
        return dominated_gaussian_sigma(training, count=VAL_RELEASES_PER_EPOCH * max_iter)

    val_rows = val_units if len(val_units) else None
    rule = val_sigma_of if val_rows is not None else None
    if target_epsilon is None:
        sigma = spec.noise_multiplier
    else:  # priced as the fit will run: with its validation releases on their rows
        sigma = calibrate_fit(
            cart,
            pair.key,
            target_epsilon=target_epsilon,
            val_rows=val_rows,
            val_sigma_of=rule,
            **common,
        ).sigma
    val_sigma = None if rule is None else rule(sigma)
    quote = quote_fit(cart, pair.key, sigma=sigma, val_sigma=val_sigma, val_rows=val_rows, **common)
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
        "n_train": len(train_units),
        "unit": unit,
        "rows_per_subject": rows.rows_per_subject,
    }
    spent_now = spent.epsilon(delta)
    return FitPlan(
        **vars(rows),
        quote=quote,
        params=params,
        spent=spent_now,
        cart=quote.epsilon_after - quote.epsilon_added - spent_now,
        cost=quote.epsilon_added,
        cart_after=quote.epsilon_after - spent_now,
        model_version=model.version,
    )


def fit_rows(
    session: Session,
    arrays: ArrayStore,
    *,
    user: UserRow,
    x_id: str,
    y_id: str,
    validation_split: float,
    rows_per_subject: int | None = None,
) -> FitRows:
    """The rows of a planned fit, checked: a running job needs these, not a new quote."""
    pair = resolve_pair(session, arrays, user=user, x_id=x_id, y_id=y_id)
    if not _distinct(pair.rows):
        raise ValidationError(
            "fit samples rows from a pool in which each row appears once. Received: a "
            "slice that repeats rows"
        )
    train_rows, val_rows, train_units, val_units = _split(pair, validation_split)
    k = _rows_per_subject(rows_per_subject, pair, n_train_subjects=len(train_units))
    return FitRows(pair, train_rows, val_rows, train_units, val_units, k)


def _distinct(rows: np.ndarray) -> bool:
    """Whether no row repeats: at once for increasing rows (any slice with a positive
    step), by sorting otherwise."""
    if len(rows) < 2 or bool(np.all(rows[1:] > rows[:-1])):
        return True
    return len(np.unique(rows)) == len(rows)


# With rows_per_subject = k every sampled subject takes k slots, padded where it owns
# fewer: an epoch then computes (training subjects x k) slots. Capped at this many times
# the dataset's rows, so that padding cannot multiply the work of a fit.
_MAX_PADDED_WORK = 4


def _rows_per_subject(value: object, pair: Pair, *, n_train_subjects: int) -> int | None:
    """k rows per sampled subject (None on a dataset whose unit is the row). By default
    the dataset's rows per subject, rounded up: every step's work, and validation's,
    then depends on public counts only, where all of each subject's rows would make it
    follow how many rows the drawn subjects own (private)."""
    if value is None and not pair.units.by_subject:
        return None
    n_rows, n_subjects = pair.n_asset_rows, pair.units.n
    most = min(n_rows - n_subjects + 1, _MAX_PADDED_WORK * n_rows // max(1, n_train_subjects))
    if value is None:
        return max(1, min(most, math.ceil(n_rows / n_subjects)))
    if not pair.units.by_subject:
        raise ValidationError(
            "rows_per_subject applies to datasets whose privacy unit is the data subject; "
            f"this dataset's unit is the row. Received: rows_per_subject={value!r}",
            field="rows_per_subject",
        )
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DB_INT:
        raise ValidationError(
            f"rows_per_subject must be an int in [1, {MAX_DB_INT}] or None (the dataset's "
            f"rows per subject). Received: rows_per_subject={value!r}",
            field="rows_per_subject",
        )
    # Public facts only: the dataset's rows and subjects, the fit's training subjects.
    if value > most:
        raise ValidationError(
            f"rows_per_subject must be at most {most} here: no subject of {n_subjects} owns "
            f"more than {n_rows - n_subjects + 1} of the {n_rows} rows, and every sampled "
            f"subject is padded to rows_per_subject rows, which may not make an epoch more "
            f"than {_MAX_PADDED_WORK}x the dataset's rows. Received: rows_per_subject={value}",
            field="rows_per_subject",
            most=most,
        )
    return value


def _split(
    pair: Pair, validation_split: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train rows, held-out rows, train units, held-out units).

    By row: the last `validation_split` of the rows are held out, as in Keras. By
    subject: the last `validation_split` of the subjects in rank order (public, fixed
    before any value is read), with all their rows; the rows of each part are private.
    """
    units = pair.units
    if not units.by_subject:
        train, held_out = split_rows(pair.rows, validation_split)
        return train, held_out, train, held_out
    train_units, val_units = split_rows(np.arange(units.n, dtype=np.int64), validation_split)
    ranks = units.subjects_of(pair.rows)
    assert ranks is not None
    held = ranks >= len(train_units)
    return pair.rows[~held], pair.rows[held], train_units, val_units


def quote(
    session: Session,
    files: NodeFiles,
    arrays: ArrayStore,
    *,
    user: UserRow,
    model_id: str,
    **plan_args: Any,
) -> FitPlan:
    """Price a planned fit of the caller's model, within the node's limits; reads only."""
    model = get_model(session, user=user, model_id=model_id)
    max_steps = get_node(session).max_fit_steps
    return plan_fit(
        session, files, arrays, user=user, model=model, max_steps=max_steps, **plan_args
    )


def _check_affordable(user: UserRow, plan: FitPlan, *, delta: float) -> None:
    """Refuse a fit whose weights the user's budget could not pay to publish."""
    if ledger.exceeds(plan.spent + plan.cart_after, user.budget):
        remaining = max(0.0, user.budget - plan.spent)
        raise BudgetExceeded(
            f"After this fit, publishing the model would cost epsilon {plan.cart_after:.6g}, "
            f"but only {remaining:.6g} of your budget {user.budget:.6g} is left "
            f"(delta={delta:g}). Plan fewer steps or more noise (target_epsilon), or ask the "
            "owner for more budget. Nothing was queued.",
            needed=plan.cart_after,
            remaining=remaining,
            budget=user.budget,
            delta=delta,
            steps=plan.quote.steps,
        )


def submit_fit(
    db: Database,
    files: NodeFiles,
    arrays: ArrayStore,
    *,
    user: UserRow,
    model_id: str,
    **plan_args: Any,
) -> JobRow:
    """Check and price the fit, then queue it; the model is busy until the job ends.

    The planning reads only; the queueing is one short write that checks the model is
    still idle and at the version the fit was priced on, and the user's `max_active_jobs`.
    """
    with db.session() as session:
        model = get_model(session, user=user, model_id=model_id)
        _idle(model)
        plan = quote(session, files, arrays, user=user, model_id=model_id, **plan_args)
        _check_affordable(user, plan, delta=get_node(session).delta)
    with db.write_session() as session:
        model = get_model(session, user=user, model_id=model_id, for_update=True)
        _idle(model)
        if model.version != plan.model_version:
            raise Conflict(
                f"Model {model_id} changed while the fit was priced (version "
                f"{plan.model_version} -> {model.version}); nothing was queued. Try again.",
                model_id=model_id,
            )
        quotas.claim(session, quotas.ACTIVE_JOBS, user_id=user.id)
        job = JobRow(
            model_id=model.id,
            owner_id=user.id,
            kind="fit",
            status=job_queue.QUEUED,
            params=plan.params,
            max_iter=plan.params["max_iter"],
            steps=plan.quote.steps,
        )
        session.add(job)
        session.flush()
        model.busy_job_id = job.id
        session.commit()
        return job


def _idle(model: ModelRow) -> None:
    if model.busy_job_id is not None:
        raise Conflict(
            f"Model {model.id} is training (job {model.busy_job_id}); wait or cancel it.",
            job_id=model.busy_job_id,
        )


def latest_job(session: Session, *, model_id: str) -> JobRow | None:
    query = (
        select(JobRow)
        .where(JobRow.model_id == model_id)
        .order_by(JobRow.created_at.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def cancel_fit(session: Session, *, user: UserRow, model_id: str) -> JobRow:
    """Cancel the model's job: a queued one at once, a running one after its step."""
    model = get_model(session, user=user, model_id=model_id)
    job = latest_job(session, model_id=model.id)
    if job is not None:  # locked and read again: on PostgreSQL a claim may have started
        # it since (then it stops after its step), or a delete removed it with its model
        job = session.get(JobRow, job.id, with_for_update=True, populate_existing=True)
    if job is None:
        raise NotFound(f"Model {model_id} has no training job.", model_id=model_id)
    cancel(session, job)
    return job


def cancel(session: Session, job: JobRow) -> None:
    """Stop `job` (`job_queue.stop`) and commit."""
    job_queue.stop(session, job)
    session.commit()


def release_validation(
    session: Session,
    files: NodeFiles,
    *,
    user: UserRow,
    model: ModelRow,
    cart: Cart,
    metrics: RowMetrics,
    rows: np.ndarray | None,
    real: np.ndarray | None = None,
    params: dict[str, Any],
    plan: FitRows,
    delta: float,
    epoch: int,
) -> tuple[dict[str, Any], Cart]:
    """Release one epoch's validation loss and accuracy, or withhold them.

    `metrics` are of `rows` (the plan's validation rows, or k slots of each held-out
    subject, of which `real` marks those holding one of its rows); `cart` is the
    model's cart as just checkpointed. The metrics are released at the fit's
    `val_sigma`, which keeps each release's cost per held-out row under the training
    rows' (held-out rows that cost nothing before add nothing to the model's cost; the
    quote counts those that did); if the budget cannot pay for the model's cart, they
    are withheld and training goes on. Returns the progress entry and the model's cart
    after it.
    """
    pair, units = plan.pair, plan.pair.units
    if units.by_subject:  # one value per held-out subject: the mean of its rows
        ranks = units.subjects_of(plan.val_rows if rows is None else rows)
        assert ranks is not None
        if real is not None:  # a padding slot is no subject's: its value is dropped
            ranks = np.where(real, ranks, -1)
        metrics = per_subject(metrics, ranks, plan.val_units)
    queries = metric_queries(
        metrics, source=pair.key, n_source_rows=units.n, rows=plan.val_units, prefix="val_"
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
            params={
                "epoch": epoch,
                f"n_{units.name}s": len(plan.val_units),
                "model_version": model.version,
            },
        )
    except BudgetExceeded as exc:
        return {"released": False, "withheld": str(exc)}, cart
    assert outcome.release.result is not None and outcome.cart is not None
    entry = {"released": True, "release_id": outcome.release.id}
    return {**entry, **released_values(outcome.release.result)}, outcome.cart
