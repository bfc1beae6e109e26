"""Flow III (`step` on chosen batches) and `evaluate`, on the model kept in memory.

A step has no sampling, so no amplification: it is a Gaussian mechanism for exactly
the rows in its batch, and the cart adds 1/(2 sigma^2) to each of those rows. The step
is checkpointed before it answers, so a restart never loses what the cart counted.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from veil._exceptions import Conflict, ValidationError
from veil.engine import check_data
from veil.nn.layers import final_activation
from veil.nn.spec import ModelSpec
from veil.privacy import Cart, RdpCurve, calibrate_sigma, gaussian
from veil.server.context import NodeContext
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.ledger import ReleaseRow
from veil.server.db.tables.models import ModelRow, PrivateObjectRow
from veil.server.services import ledger
from veil.server.services.checkpoints import prune_old_versions, save_checkpoint
from veil.server.services.data import resolve_pair, select_rows, split_rows
from veil.server.services.live_models import LiveModel
from veil.server.services.models import get_model
from veil.server.services.node import get_node

__all__ = ["EVAL_RELEASES", "evaluate", "step"]

EVAL_RELEASES = 2  # loss and accuracy


def _idle(model: ModelRow) -> None:
    if model.busy_job_id is not None:
        raise Conflict(
            f"Model {model.id} is training (job {model.busy_job_id}); wait for it or cancel it.",
            job_id=model.busy_job_id,
        )


def _private(
    session: Session,
    ctx: NodeContext,
    *,
    user: UserRow,
    model: ModelRow,
    kind: str,
    value: np.ndarray,
    sensitivity: float | None,
    n_rows: int,
) -> PrivateObjectRow:
    row = PrivateObjectRow(
        owner_id=user.id,
        model_id=model.id,
        kind=kind,
        shape=list(value.shape),
        sensitivity=sensitivity,
        n_rows=n_rows,
        path="",
    )
    session.add(row)
    session.flush()
    path = ctx.files.private_object(row.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, value, allow_pickle=False)
    row.path = str(path)
    return row


def _split_batch(
    rows: np.ndarray, validation_split: float, batch_size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    train, held_out = split_rows(rows, validation_split)
    if batch_size is not None and (batch_size < 1 or len(train) > batch_size):
        raise ValidationError(
            f"A step may take at most batch_size={batch_size} rows. Received: {len(train)} rows "
            "to train on; slice the pointer, e.g. x_ptr[0:32]."
        )
    return train, held_out


def step(
    ctx: NodeContext,
    *,
    user: UserRow,
    model_id: str,
    x_id: str,
    y_id: str,
    validation_split: float = 0.0,
    batch_size: int | None = None,
) -> tuple[PrivateObjectRow, PrivateObjectRow]:
    """One DP-SGD step on exactly these rows; returns private (loss, predictions).

    With `validation_split`, the last rows are held out of the update and the loss and
    predictions are those of the held-out rows; they cost nothing until published.
    """
    with ctx.live.lock(model_id), ctx.db.write_session() as session:
        model = get_model(session, user=user, model_id=model_id, for_update=True)
        _idle(model)
        spec = ModelSpec.from_dict(model.spec)
        pair = resolve_pair(session, ctx.arrays, user=user, x_id=x_id, y_id=y_id)
        train, held_out = _split_batch(pair.rows, validation_split, batch_size)
        x, y = pair.x.array, pair.y.array
        xb, yb = np.asarray(x[train]), np.asarray(y[train])
        check_data(spec, xb, yb)
        if len(held_out):
            check_data(spec, np.asarray(x[held_out]), np.asarray(y[held_out]))
        live = ctx.live.get(model)
        cart = live.cart.copy()
        cart.ensure_source(pair.key, pair.n_asset_rows)
        # From here the in-memory weights move ahead of the stored cart: if anything
        # fails before the commit, forget them so no uncounted step is ever kept.
        with ctx.live.evicted_on_error(model.id):
            loss, preds = _step_and_store(
                session,
                ctx,
                user=user,
                model=model,
                spec=spec,
                live=live,
                cart=cart,
                key=pair.key,
                batch=(xb, yb),
                train=train,
                x=x,
                y=y,
                held_out=held_out,
            )
            session.commit()
        ctx.live.put(model.id, LiveModel(version=model.version, trainer=live.trainer, cart=cart))
        prune_old_versions(ctx.files, model)
        return loss, preds


def _step_and_store(
    session: Session,
    ctx: NodeContext,
    *,
    user: UserRow,
    model: ModelRow,
    spec: ModelSpec,
    live: LiveModel,
    cart: Cart,
    key: str,
    batch: tuple[np.ndarray, np.ndarray],
    train: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    held_out: np.ndarray,
) -> tuple[PrivateObjectRow, PrivateObjectRow]:
    """Step on `batch` (rows `train`), count them in the cart, checkpoint, keep results private."""
    result = live.trainer.step(*batch)
    cart.add_gaussian_rows(key, train, sigma=spec.noise_multiplier)
    save_checkpoint(ctx.files, model, trainer=live.trainer, cart=cart, steps_added=1)
    if len(held_out):
        loss_value, _, n = live.trainer.evaluate(x, y, rows=held_out)
        preds_value = live.trainer.predict(np.asarray(x[held_out]))
    else:
        loss_value, preds_value, n = result.loss, result.preds, len(train)
    loss = _private(
        session,
        ctx,
        user=user,
        model=model,
        kind="loss",
        value=np.asarray(loss_value, dtype=np.float64),
        sensitivity=spec.loss_bound / n,
        n_rows=n,
    )
    bounded = final_activation(spec.layers) in ("sigmoid", "softmax")
    preds = _private(
        session,
        ctx,
        user=user,
        model=model,
        kind="predictions",
        value=np.asarray(preds_value, dtype=np.float64),
        sensitivity=1.0 if bounded else None,
        n_rows=n,
    )
    return loss, preds


def evaluate(
    ctx: NodeContext, *, user: UserRow, model_id: str, x_id: str, y_id: str, epsilon: float
) -> ReleaseRow:
    """Release noised loss and accuracy of the model on these rows, charged.

    `epsilon` prices the two Gaussian queries on the evaluation rows (sigma is the
    smallest meeting it at the node's delta); the release also reveals the model, so
    it settles the model's uncharged cart too.
    """
    if not isinstance(epsilon, int | float) or not 0 < epsilon < float("inf"):
        raise ValidationError(f"epsilon must be a finite number > 0. Received: epsilon={epsilon!r}")
    with ctx.live.lock(model_id), ctx.db.write_session() as session:
        model = get_model(session, user=user, model_id=model_id, for_update=True)
        _idle(model)
        spec = ModelSpec.from_dict(model.spec)
        pair = resolve_pair(session, ctx.arrays, user=user, x_id=x_id, y_id=y_id)
        delta = get_node(session).delta
        sigma = calibrate_sigma(epsilon, lambda s: gaussian(s, count=EVAL_RELEASES).epsilon(delta))
        live = ctx.live.get(model)
        check_data(spec, select_rows(pair.x.array, pair.rows), select_rows(pair.y.array, pair.rows))
        loss, accuracy, n = live.trainer.evaluate(pair.x.array, pair.y.array, rows=pair.rows)
        cart = live.cart.copy()
        cart.ensure_source(pair.key, pair.n_asset_rows)
        cart.add_gaussian_rows(pair.key, pair.rows, sigma=sigma, count=EVAL_RELEASES)
        rng = np.random.default_rng(secrets.randbits(128))
        noised: dict[str, Any] = {
            "loss": float(loss + rng.normal(0.0, sigma * spec.loss_bound / n))
        }
        if accuracy is not None:
            noised["accuracy"] = float(accuracy + rng.normal(0.0, sigma / n))
        release = ledger.charge(
            session,
            user=user,
            curve_added=cart.curve() - RdpCurve.from_list(model.charged_curve),
            delta=delta,
            kind="metrics",
            mechanism="gaussian",
            params={
                "sigma": sigma,
                "epsilon": epsilon,
                "n_rows": n,
                "model_version": model.version + 1,
            },
            model_id=model.id,
            result=noised,
        )
        save_checkpoint(ctx.files, model, trainer=live.trainer, cart=cart)
        model.charged_curve = model.cart_curve
        session.commit()
        ctx.live.put(model.id, LiveModel(version=model.version, trainer=live.trainer, cart=cart))
        prune_old_versions(ctx.files, model)
        return release
