"""Flow III (`step` on chosen batches) and `evaluate`, on the model kept in memory.

A step has no sampling, so no amplification: it is a Gaussian mechanism for exactly
the rows in its batch, and the cart adds 1/(2 sigma^2) to each of those rows. On a
dataset whose unit is the subject, each subject's rows are clipped together and the
charge goes to every subject (`services.units`). Its per-row losses and predictions
stay on the node as private objects until released.

Each first takes one of its user's compute slots (`ComputePool.admitted`: a user's
extra request is refused at once, never queued in a thread), then its model's lock.
Neither holds a database lock while it computes: each reads what it needs, trains or
evaluates with the model's in-memory lock only, and then commits in one short write
transaction that first checks the model is still idle and at the version it computed
on. If it is not (a fit started, another node process stepped it), nothing is kept or
charged and the caller gets a Conflict to retry.

What a step stores, and how durably. The step's checkpoint (weights, optimizer and
generator state; the cart with the batch's rows counted, as the rows it changed,
`services.cart_changes`) and its two private objects are written in that one
transaction, as rows (`checkpoints.commit_step`), with no file. So the model's
weights, its cart and its step count move together or not at all, whatever kills the
node: a restart never finds a step the cart did not count, nor a count without its
step. The commit returns before it is on disk
(`write_session(durable=False)`), which saves a disk flush per step, the bulk of what
a step cost over the engine's own work. What that gives up, and why nothing depends on
it:

- A process that dies (crash, SIGKILL, OOM) loses nothing: the commit is in the
  operating system's hands (SQLite's WAL) or the database server's (PostgreSQL) before
  `step` answers.
- A power cut or kernel crash may lose the steps committed since the last flush: on
  SQLite the last durable commit or WAL checkpoint (one per thousand pages of WAL, a
  few dozen steps of a small model), on PostgreSQL the last fraction of a second (its
  WAL writer flushes within three `wal_writer_delay`). Both databases recover a
  prefix of the commits, so such a step is lost whole: weights, cart count and private
  objects together, and the model is as it was before it, which the cart counts
  exactly.
- Nothing a data scientist saw depended on a lost step: a step answers with ids and
  public shapes only. Anything computed from private data leaves through a release,
  which commits durably (the default `write_session`); a durable commit also makes
  every earlier commit durable (the prefix again), so a release never survives
  without the steps its model had, and no charge is lost: budgets are charged by
  releases only, never by steps. After such a loss the step's objects are NotFound and
  the model's step count is back where it was: public facts, not private ones.

`tests/server/test_step_durability.py` checks these: a node killed just before a
step's commit keeps none of it and one killed just after keeps all of it; a database
cut back to an earlier commit (as a power cut leaves it) holds a model whose weights,
cart and objects agree; only steps commit lazily, and a release refuses to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from sqlalchemy.orm import Session

from veil._exceptions import Conflict, ValidationError
from veil.nn.layers import final_activation
from veil.nn.spec import ModelSpec
from veil.privacy import EachRow, MeanOf
from veil.server.context import NodeContext
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.ledger import ReleaseRow
from veil.server.db.tables.models import ModelRow, PrivateObjectRow
from veil.server.services.cart_changes import cart_change
from veil.server.services.checkpoints import (
    commit_step,
    encode_state,
    loading_version,
    prune_old_versions,
)
from veil.server.services.data import Pair, check_public, resolve_pair, split_rows
from veil.server.services.failpoints import failpoint
from veil.server.services.live_models import LiveModel
from veil.server.services.models import ModelFacts, get_model, model_facts
from veil.server.services.node import get_node
from veil.server.services.private_objects import pending_object, record_objects
from veil.server.services.releases import metric_queries, noise_for, release_metrics

__all__ = ["Batch", "evaluate", "prediction_bound", "step"]


def _idle(model: ModelRow | ModelFacts) -> None:
    if model.busy_job_id is not None:
        raise Conflict(
            f"Model {model.id} is training (job {model.busy_job_id}); wait for it or cancel it.",
            job_id=model.busy_job_id,
        )


def prediction_bound(spec: ModelSpec) -> EachRow | None:
    """The L2 norm one row's output can reach, when the model's last activation bounds it:
    sigmoid (or tanh) values in [-1, 1], softmax rows summing to one over axis 1."""
    out = [int(d) for d in spec.output_shape[1:]]  # type: ignore[arg-type]
    final = final_activation(spec.layers)
    if final in ("sigmoid", "tanh"):
        return EachRow(math.sqrt(math.prod(out)))
    if final == "softmax":
        return EachRow(math.sqrt(math.prod(out[1:])))
    return None


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


# A step keeps its rows' predictions (a private object, in the database): at most this
# many values, so that no step holds or stores more than 64 MiB of them.
MAX_STEP_VALUES = 1 << 24


def _check_kept(spec: ModelSpec, rows: int) -> None:
    per_row = math.prod(int(d) for d in spec.output_shape[1:])  # type: ignore[misc]
    if rows * per_row > MAX_STEP_VALUES:
        most = MAX_STEP_VALUES // per_row
        raise ValidationError(
            f"A step keeps its rows' predictions: at most {MAX_STEP_VALUES:,} values. "
            f"Received: {rows} rows of {per_row} outputs = {rows * per_row:,}; step on "
            f"at most {most} rows, e.g. x_ptr[0:{most}].",
            most_rows=most,
        )


# A step or an evaluation answers its request, so its work is bounded: rows times the
# model's FLOPs per row (forward; a step's backward pass and per-example gradients add a
# few times that), at most about a minute of one core. Longer training is a fit, a job
# that can be cancelled; an evaluation, forward only, may read ten times the rows.
MAX_STEP_FLOPS = 10**11
MAX_EVALUATE_FLOPS = 10**12


def _check_work(spec: ModelSpec, rows: int, *, limit: int, what: str) -> None:
    if rows * spec.flops_per_example > limit:
        most = max(1, limit // spec.flops_per_example)
        raise ValidationError(
            f"{what} computes at most {limit:.0e} FLOPs (rows x the model's "
            f"{spec.flops_per_example:,} FLOPs per row). Received: {rows} rows = "
            f"{rows * spec.flops_per_example:.3g} FLOPs; use at most {most} rows, e.g. "
            f"x_ptr[0:{most}].",
            most_rows=most,
        )


@dataclass(frozen=True)
class _Read:
    """What a step or an evaluation read before computing, with no lock held."""

    spec: ModelSpec
    pair: Pair
    live: LiveModel


@dataclass(frozen=True)
class Batch:
    """The rows a step or an evaluation reads: pointers x and y, each optionally sliced
    in the request itself (`x[x_rows]`), which saves a slice request per batch."""

    x_id: str
    y_id: str
    x_rows: slice | None = None
    y_rows: slice | None = None


def _read(ctx: NodeContext, *, user: UserRow, model_id: str, batch: Batch) -> _Read:
    """Check the request against public facts and fetch the model (call under its lock)."""
    with ctx.db.session() as session:
        facts = model_facts(session, user=user, model_id=model_id)
        _idle(facts)
        live = ctx.live.cached(model_id, facts.version)
        if live is None:  # first use, or it moved on elsewhere: load it at its version
            with loading_version(session, model_id=model_id, version=facts.version):
                live = ctx.live.get(session, get_model(session, user=user, model_id=model_id))
        spec = live.trainer.spec
        pair = resolve_pair(session, ctx.arrays, user=user, **vars(batch))
        check_public(spec, pair)
    return _Read(spec=spec, pair=pair, live=live)


def _why_not(session: Session, *, user: UserRow, model_id: str, version: int) -> NoReturn:
    """Raise what stopped a commit on the model at `version` (NotFound, Conflict)."""
    _locked_unchanged(session, user=user, model_id=model_id, version=version)
    raise Conflict(f"Model {model_id} changed meanwhile; nothing was kept. Try again.")


def _locked_unchanged(session: Session, *, user: UserRow, model_id: str, version: int) -> ModelRow:
    """The model, locked, if still idle and at `version`; else a Conflict (retry)."""
    model = get_model(session, user=user, model_id=model_id, for_update=True)
    _idle(model)
    if model.version != version:
        raise Conflict(
            f"Model {model_id} changed while this request computed (version {version} -> "
            f"{model.version}); nothing was trained or charged. Try again.",
            model_id=model_id,
            version=model.version,
        )
    return model


def step(
    ctx: NodeContext,
    *,
    user: UserRow,
    model_id: str,
    batch: Batch,
    validation_split: float = 0.0,
    batch_size: int | None = None,
) -> tuple[PrivateObjectRow, PrivateObjectRow]:
    """One DP-SGD step on exactly these rows; returns private (loss, predictions).

    With `validation_split`, the last rows are held out of the update and the loss and
    predictions are those of the held-out rows; they cost nothing until published.
    """
    with ctx.compute.admitted(user.id), ctx.live.lock(user.id, model_id):
        read = _read(ctx, user=user, model_id=model_id, batch=batch)
        spec, pair, live = read.spec, read.pair, read.live
        train, held_out = _split_batch(pair.rows, validation_split, batch_size)
        _check_kept(spec, len(pair.rows))
        _check_work(spec, len(pair.rows), limit=MAX_STEP_FLOPS, what="A step")
        x, y = pair.x.array, pair.y.array
        units = pair.units
        cart = live.cart  # charged in place (a copy would cost O(rows of the dataset))
        # From here the in-memory weights and cart move ahead of the stored ones: if
        # anything fails before the commit, forget them so no uncounted step is kept.
        with ctx.live.evicted_on_error(model_id):
            result = ctx.compute.run(
                lambda: live.trainer.step(
                    np.asarray(x[train]), np.asarray(y[train]), subjects=units.subjects_of(train)
                )
            )
            changed = units.charge_rows(cart, pair.key, train, sigma=spec.noise_multiplier)
            rows, metrics, preds = train, result.metrics, result.preds
            if len(held_out):
                rows = held_out
                metrics = ctx.compute.run(lambda: live.trainer.evaluate_rows(x, y, rows=held_out))
                preds = ctx.compute.run(lambda: live.trainer.predict(np.asarray(x[held_out])))
            common = {"source": pair.key, "rows": rows, "groups": units.subjects_of(rows)}
            bound = spec.loss_bound
            loss = pending_object(
                kind="loss",
                values=metrics.losses,
                shape=(),
                bound=MeanOf(high=bound, fill=bound),
                **common,
            )
            predictions = pending_object(
                kind="predictions",
                values=preds,
                shape=tuple(preds.shape),
                bound=prediction_bound(spec),
                **common,
            )
            state = encode_state(live.trainer)
            change = cart_change(
                cart, version=live.version + 1, changed={pair.key: changed}, chain=live.chain
            )
            with ctx.db.write_session(durable=False) as session:
                if not commit_step(
                    session,
                    owner_id=user.id,
                    model_id=model_id,
                    version=live.version,
                    data=state,
                    cart=cart,
                    change=change,
                ):
                    _why_not(session, user=user, model_id=model_id, version=live.version)
                rows_out = record_objects(
                    session, [loss, predictions], owner_id=user.id, model_id=model_id
                )
                failpoint("step.before_commit")
                session.commit()
            failpoint("step.after_commit")
        version = live.version + 1
        live = LiveModel(version=version, trainer=live.trainer, cart=cart, chain=change.chain)
        ctx.live.put(model_id, live)
        if ctx.files.weights(model_id, version - 2).exists():
            prune_old_versions(ctx.files, model_id, version)  # files from before its steps
        return rows_out[0], rows_out[1]


def evaluate(
    ctx: NodeContext, *, user: UserRow, model_id: str, batch: Batch, epsilon: float
) -> ReleaseRow:
    """Release noised loss and accuracy of the model on these rows, charged.

    `epsilon` prices the Gaussian queries on the evaluation rows (sigma is the smallest
    meeting it at the node's delta); they are charged per row in the model's cart, and
    the release also reveals the model, so it settles the model's unpaid cart too.
    """
    with ctx.compute.admitted(user.id), ctx.live.lock(user.id, model_id):
        read = _read(ctx, user=user, model_id=model_id, batch=batch)
        pair, live = read.pair, read.live
        _check_work(read.spec, len(pair.rows), limit=MAX_EVALUATE_FLOPS, what="An evaluation")
        with ctx.db.session() as session:
            delta = get_node(session).delta
        metrics = ctx.compute.run(
            lambda: live.trainer.evaluate_rows(pair.x.array, pair.y.array, rows=pair.rows)
        )
        queries = metric_queries(
            metrics,
            source=pair.key,
            n_source_rows=pair.units.n,
            rows=pair.rows,
            groups=pair.units.subjects_of(pair.rows),
        )
        sigma = noise_for(sigma=None, epsilon=epsilon, count=len(queries), delta=delta)
        with ctx.db.write_session() as session:
            model = _locked_unchanged(session, user=user, model_id=model_id, version=live.version)
            outcome = release_metrics(
                session,
                ctx.files,
                user=user,
                model=model,
                cart=live.cart,
                queries=queries,
                sigma=sigma,
                delta=delta,
                params={"epsilon": epsilon, "n_rows": metrics.n, "model_version": model.version},
            )
            session.commit()
        assert outcome.cart is not None
        ctx.live.put(
            model.id, LiveModel(version=model.version, trainer=live.trainer, cart=outcome.cart)
        )
        prune_old_versions(ctx.files, model.id, model.version)
        return outcome.release
