"""Releases: the one path by which anything computed from private rows leaves the node.

`release()` is that path, for weights, a step's loss and predictions, evaluate and
validation metrics alike. Inside the caller's write transaction, with the model row
locked, it

1. bounds each private value (`veil.privacy.bounding`: finite, each row clipped to the
   sensitivity the charge assumes),
2. noises it from a fresh cryptographically secure source and snaps it,
3. charges the ledger: the model's cart with these rows' Gaussian releases added,
   minus what this model already paid (any result reveals the model, so it settles the
   model's cart too; publishing twice costs once),
4. records the release and stores the grown cart as the model's next version,

so a result becomes readable exactly when it is paid for, or not at all. Releases on
rows a data scientist chose are charged per row in the cart: results on disjoint rows
compose in parallel, results on the same row add up.

Who calls it: `publish_weights` (no values: DP-SGD noised the weights),
`publish_object` (flow III), `release_metrics` (evaluate; validation during `fit`).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from veil._exceptions import Conflict, NotFound, ValidationError
from veil.engine import RowMetrics
from veil.nn.spec import ModelSpec
from veil.privacy import (
    SIGMA_MAX,
    SIGMA_MIN,
    Bound,
    Cart,
    EachRow,
    MeanOf,
    RdpCurve,
    SecureNoise,
    calibrate_sigma,
    gaussian,
    release_value,
)
from veil.server.db.base import new_id
from veil.server.db.engine import Database
from veil.server.db.tables.accounts import ROLE_ADMIN, UserRow
from veil.server.db.tables.ledger import ReleaseRow
from veil.server.db.tables.models import ModelRow
from veil.server.services import ledger
from veil.server.services.checkpoints import (
    load_cart,
    loading_version,
    save_cart_version,
    save_weights,
)
from veil.server.services.failpoints import failpoint
from veil.server.services.node import get_node
from veil.server.services.private_objects import load_object
from veil.server.storage.files import NodeFiles

__all__ = [
    "KIND_METRICS",
    "KIND_OBJECT",
    "KIND_WEIGHTS",
    "Outcome",
    "Query",
    "ReleasePayload",
    "get_release",
    "list_releases",
    "metric_queries",
    "noise_for",
    "owned_model",
    "publish_object",
    "publish_weights",
    "release",
    "released_values",
    "release_metrics",
    "release_payload",
    "sweep_orphans",
]

KIND_WEIGHTS = "weights"
KIND_OBJECT = "object"
KIND_METRICS = "metrics"
_WEIGHTS_SUFFIX = ".safetensors"
_MAX_CLIP = 1e6


@dataclass(frozen=True)
class Query:
    """Private per-row values over `rows` of data source `source` (of `n_source_rows`
    rows), waiting to be released as `name` under `bound`. `value_range` is where the
    true value lies, when that is known (a loss in [0, loss_bound]): the release offers
    the noised value clipped to it, post-processing that costs nothing."""

    name: str
    source: str
    n_source_rows: int
    rows: np.ndarray
    values: np.ndarray
    bound: Bound
    value_range: tuple[float, float] | None = None
    # Each value's data subject, where the source's unit is the subject: the bound then
    # applies to a subject's rows together, and since which subjects hold `rows` is
    # private, the release is charged to every subject of the source.
    groups: np.ndarray | None = None


@dataclass(frozen=True)
class Outcome:
    release: ReleaseRow
    cart: Cart | None  # the model's cart after the release; None if no rows were charged


def owned_model(session: Session, *, user: UserRow, model_id: str, lock: bool = True) -> ModelRow:
    """The caller's model, locked (unless `lock=False`) against a concurrent checkpoint or
    release of it."""
    query = select(ModelRow).where(ModelRow.id == model_id, ModelRow.owner_id == user.id)
    if lock:
        query = query.with_for_update()
    model = session.scalars(query.execution_options(populate_existing=True)).first()
    if model is None:  # another user's model answers as if it did not exist
        raise NotFound(f"No model {model_id!r} among your models.", model_id=model_id)
    return model


def release(
    session: Session,
    files: NodeFiles,
    *,
    user: UserRow,
    model: ModelRow | None,
    kind: str,
    mechanism: str,
    params: Mapping[str, Any],
    delta: float,
    queries: Sequence[Query] = (),
    sigma: float | None = None,
    cart: Cart | None = None,
    object_id: str | None = None,
    result_path: str | None = None,
    release_id: str | None = None,
    derive: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Outcome:
    """Bound, noise, charge and record; the caller holds the model row locked and commits.

    With a model and `queries`, `cart` must be the model's cart at its current version
    and `sigma` the noise multiplier of every query. Without a model (statistics of an
    asset), each query is charged as a Gaussian on its own, with no cart. `derive` adds
    post-processed figures to the result (from the noised values only). Raises
    `BudgetExceeded` (recording nothing) when the user's budget cannot pay.
    """
    if queries and sigma is None:
        raise ValueError("release() with queries needs a sigma")
    after: Cart | None = None
    result: dict[str, Any] | None = None
    if queries:
        noise = SecureNoise()
        values = {q.name: _released(q, sigma=sigma, noise=noise) for q in queries}
        result = {"sigma": sigma, "values": values}
        if derive is not None:
            result.update(derive(values))
    if model is None:
        curve = gaussian(sigma, count=len(queries)) if queries else RdpCurve.zero()
        curve_added = curve
    elif queries:
        if cart is None:
            raise ValueError("release() of a model's results needs the model's cart")
        after = cart.copy()
        for query in queries:
            after.ensure_source(query.source, query.n_source_rows)
            if query.groups is None:
                after.add_gaussian_rows(query.source, query.rows, sigma=sigma)
            else:
                after.add_gaussian_all(query.source, sigma=sigma)
        curve = after.curve()
        curve_added = curve - RdpCurve.from_list(model.charged_curve)
    else:
        curve = RdpCurve.from_list(model.cart_curve)
        curve_added = curve - RdpCurve.from_list(model.charged_curve)
    row = ledger.charge(
        session,
        user=user,
        curve_added=curve_added,
        delta=delta,
        kind=kind,
        mechanism=mechanism,
        params=params,
        model_id=None if model is None else model.id,
        object_id=object_id,
        result_path=result_path,
        result=result,
        release_id=release_id,
    )
    if model is not None:
        if after is not None:
            save_cart_version(session, files, model, cart=after)
        model.charged_curve = curve.to_list()
    session.flush()
    return Outcome(release=row, cart=after)


def _released(query: Query, *, sigma: float, noise: SecureNoise) -> dict[str, Any]:
    out = release_value(
        query.values, bound=query.bound, sigma=sigma, noise=noise, groups=query.groups
    )
    entry = {
        "value": out.value.tolist(),
        "std": out.std,
        "shape": list(out.value.shape),
        "bound": query.bound.to_dict(),
        "range": None if query.value_range is None else list(query.value_range),
    }
    if query.value_range is not None:
        entry["clipped"] = np.clip(out.value, *query.value_range).tolist()
    return entry


def released_values(result: Mapping[str, Any]) -> dict[str, Any]:
    """`{name: value, name_std: noise std, name_clipped: value clipped to its range}` from
    a release's result, for progress and replies."""
    out: dict[str, Any] = {}
    for name, entry in result["values"].items():
        out[name] = entry["value"]
        out[f"{name}_std"] = entry["std"]
        if "clipped" in entry:
            out[f"{name}_clipped"] = entry["clipped"]
    return out


# Choosing the noise --------------------------------------------------------------


def _finite_positive(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValidationError(
            f"Expected {name} as a finite number > 0. Received: {name}={value!r}", field=name
        )
    return float(value)


def noise_for(
    *,
    sigma: float | None,
    epsilon: float | None,
    count: int,
    delta: float,
) -> float:
    """The noise multiplier of `count` Gaussian releases: `sigma` as given, or the least
    whose cost is at most `epsilon`. Anything that cannot be honoured is refused with
    the figures (never silently replaced by other noise). A budget too small to pay is
    refused by the charge itself, which knows the rows involved."""
    if (sigma is None) == (epsilon is None):
        raise ValidationError(
            "Expected exactly one of sigma (noise multiplier) or epsilon (target). "
            f"Received: sigma={sigma!r}, epsilon={epsilon!r}",
            sigma=sigma,
            epsilon=epsilon,
        )
    if sigma is not None:
        sigma = _finite_positive("sigma", sigma)
        if not SIGMA_MIN <= sigma <= SIGMA_MAX:
            raise ValidationError(
                f"Expected sigma in [{SIGMA_MIN}, {SIGMA_MAX:g}], the noise this node allows. "
                f"Received: sigma={sigma}",
                field="sigma",
            )
        return sigma
    target = _finite_positive("epsilon", epsilon)
    cost = lambda s: gaussian(s, count=count).epsilon(delta)  # noqa: E731
    most, least = cost(SIGMA_MIN), cost(SIGMA_MAX)
    if target > most:
        raise ValidationError(
            f"epsilon={target:g} cannot be spent on this release: the least noise this "
            f"node allows (sigma={SIGMA_MIN}) costs epsilon {most:.6g}. Ask for at most that.",
            field="epsilon",
            most=most,
        )
    if target < least:
        raise ValidationError(
            f"epsilon={target:g} is below what the most noise this node allows "
            f"(sigma={SIGMA_MAX:g}) costs: epsilon {least:.6g}. Ask for at least that.",
            field="epsilon",
            least=least,
        )
    return calibrate_sigma(target, cost)


# Weights --------------------------------------------------------------------------


def publish_weights(db: Database, files: NodeFiles, *, user: UserRow, model_id: str) -> ReleaseRow:
    """Release the weights of the caller's model, charging its cart minus what was paid.

    Reads two curves from the model's row, never the training steps, so its time does
    not grow with training. The release's file is written before the commit: a crash in
    between leaves a file no release points to, which `sweep_orphans` removes.
    """
    with db.write_session() as session:
        delta = get_node(session).delta
        model = owned_model(session, user=user, model_id=model_id)
        release_id = new_id()
        target = files.release(release_id, _WEIGHTS_SUFFIX)
        try:
            if not save_weights(session, files, model, target):
                raise Conflict(
                    f"Model {model_id!r} has no weights at version {model.version} yet.",
                    model_id=model_id,
                    version=model.version,
                )
            outcome = release(
                session,
                files,
                user=user,
                model=model,
                kind=KIND_WEIGHTS,
                mechanism="dp-sgd",
                params={"version": model.version, "steps": model.steps},
                delta=delta,
                result_path=target.relative_to(files.root).as_posix(),
                release_id=release_id,
            )
            failpoint("publish.before_commit")
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        # If the commit fails the file stays: whether it committed may be unknown, and
        # a paid result must not lose its file. An orphan is swept at the next start.
        session.commit()
    failpoint("publish.after_commit")
    return outcome.release


# Private objects (flow III) -------------------------------------------------------


def _object_bound(bound: Bound | None, clip: float | None, kind: str) -> Bound:
    if clip is None:
        if bound is None:
            raise ValidationError(
                f"This model's {kind} have no natural bound (its output is not a sigmoid or "
                "softmax), so the node cannot know their sensitivity. Expected: "
                "publish(..., clip=c) with c the L2 norm each row is clipped to. Received: none",
                kind=kind,
            )
        return bound
    clip = _finite_positive("clip", clip)
    if clip > _MAX_CLIP:
        raise ValidationError(f"Expected clip <= {_MAX_CLIP:g}. Received: clip={clip}")
    if isinstance(bound, MeanOf):
        return MeanOf(high=clip, fill=min(bound.fill, clip))
    return EachRow(norm=clip)


def _object_range(kind: str, bound: Bound, model: ModelRow) -> tuple[float, float] | None:
    if isinstance(bound, MeanOf):
        return (0.0, bound.high)
    return ModelSpec.from_dict(model.spec).output_range if kind == "predictions" else None


def publish_object(
    db: Database,
    files: NodeFiles,
    *,
    user: UserRow,
    object_id: str,
    sigma: float | None = None,
    epsilon: float | None = None,
    clip: float | None = None,
) -> ReleaseRow:
    """Release a private object with Gaussian noise; give `sigma` or a target `epsilon`.

    `epsilon` prices the Gaussian alone; what is charged is the model's cart with the
    object's rows added, minus what was paid (often less than `epsilon` when other
    releases touched other rows, more when the model has unpaid training). `clip`
    overrides the bound on each row (required when the model's output has none).
    """
    with db.session() as session:  # read and price with no lock held
        delta = get_node(session).delta
        stored = load_object(session, files, user=user, object_id=object_id)
        bound = _object_bound(stored.bound, clip, stored.row.kind)
        sigma = noise_for(sigma=sigma, epsilon=epsilon, count=1, delta=delta)
        model = owned_model(session, user=user, model_id=stored.row.model_id, lock=False)
        version = model.version
        with loading_version(session, model_id=model.id, version=version):
            cart = load_cart(session, files, model)  # a step put the object's rows in it
    query = Query(
        name=stored.row.kind,
        source=stored.row.source,
        n_source_rows=cart.n_rows(stored.row.source),
        rows=stored.rows,
        values=stored.values,
        bound=bound,
        value_range=_object_range(stored.row.kind, bound, model),
        groups=stored.groups,
    )
    with db.write_session() as session:
        model = owned_model(session, user=user, model_id=stored.row.model_id)
        if model.busy_job_id is not None or model.version != version:
            # A fit owns the model, or it moved on since its cart was read: the cart
            # this release would grow is not the model's any more.
            raise Conflict(
                f"Model {model.id} is training or changed while this publish was priced "
                f"(version {version} -> {model.version}); nothing was charged. Try again "
                "once it is idle.",
                model_id=model.id,
                job_id=model.busy_job_id,
            )
        outcome = release(
            session,
            files,
            user=user,
            model=model,
            kind=KIND_OBJECT,
            mechanism="gaussian",
            params={
                "sigma": sigma,
                "target_epsilon": epsilon,
                "object_kind": stored.row.kind,
                "n_rows": stored.row.n_rows,
                "model_version": model.version,
            },
            delta=delta,
            queries=[query],
            sigma=sigma,
            cart=cart,
            object_id=stored.row.id,
        )
        session.commit()
    return outcome.release


# Metrics (evaluate, validation) ---------------------------------------------------


def metric_queries(
    metrics: RowMetrics,
    *,
    source: str,
    n_source_rows: int,
    rows: np.ndarray,
    prefix: str = "",
    groups: np.ndarray | None = None,
) -> list[Query]:
    """The mean loss (each row clipped to [0, loss_bound]) and, unless MSE, the accuracy;
    with `groups`, each subject's rows bounded together."""
    common = {"source": source, "n_source_rows": n_source_rows, "rows": rows, "groups": groups}
    bound = metrics.loss_bound
    queries = [
        Query(
            name=f"{prefix}loss",
            values=metrics.losses,
            bound=MeanOf(bound, bound),
            value_range=(0.0, bound),
            **common,
        )
    ]
    if metrics.correct is not None:
        queries.append(
            Query(
                name=f"{prefix}accuracy",
                values=metrics.correct,
                bound=MeanOf(1.0, 0.0),
                value_range=(0.0, 1.0),
                **common,
            )
        )
    return queries


def release_metrics(
    session: Session,
    files: NodeFiles,
    *,
    user: UserRow,
    model: ModelRow,
    cart: Cart,
    queries: Sequence[Query],
    sigma: float,
    delta: float,
    params: Mapping[str, Any],
) -> Outcome:
    """Release noised metrics of `model` (locked; `cart` stored at its version)."""
    return release(
        session,
        files,
        user=user,
        model=model,
        kind=KIND_METRICS,
        mechanism="gaussian",
        params={"sigma": sigma, **params},
        delta=delta,
        queries=queries,
        sigma=sigma,
        cart=cart,
    )


# Reading releases -----------------------------------------------------------------


@dataclass(frozen=True)
class ReleasePayload:
    """What a release hands out: a file (weights) or a JSON result (everything else)."""

    release: ReleaseRow
    path: Path | None
    result: dict[str, Any] | None


def list_releases(session: Session, *, user: UserRow) -> list[ReleaseRow]:
    """The releases of `user`, oldest first."""
    query = (
        select(ReleaseRow)
        .where(ReleaseRow.user_id == user.id)
        .order_by(ReleaseRow.created_at, ReleaseRow.id)
    )
    return list(session.scalars(query))


def get_release(session: Session, *, user: UserRow, release_id: str) -> ReleaseRow:
    """A release of `user`, or any release for the admin; others answer NotFound."""
    row = session.get(ReleaseRow, release_id)
    if row is None or (row.user_id != user.id and user.role != ROLE_ADMIN):
        raise NotFound(f"No release {release_id!r} among yours.", release_id=release_id)
    return row


def release_payload(
    session: Session, files: NodeFiles, *, user: UserRow, release_id: str
) -> ReleasePayload:
    """What `GET /releases/{id}/result` hands out: the weights file or the JSON result."""
    row = get_release(session, user=user, release_id=release_id)
    if row.result_path is None:
        return ReleasePayload(release=row, path=None, result=row.result)
    path = files.root / row.result_path
    if not path.is_file():
        raise NotFound(
            f"The file of release {release_id!r} is missing from the node's data directory.",
            release_id=release_id,
        )
    return ReleasePayload(release=row, path=path, result=None)


def sweep_orphans(db: Database, files: NodeFiles, *, grace_s: float = 60.0) -> list[Path]:
    """Delete release files no release row points to (left by a crash before commit).

    Run at start. Files changed in the last `grace_s` seconds are kept, so that another
    process serving the same data directory may finish a publish it has begun.
    """
    folder = files.release("-", _WEIGHTS_SUFFIX).parent
    if not folder.is_dir():
        return []
    cutoff = time.time() - grace_s
    candidates = [p for p in folder.iterdir() if p.is_file() and p.stat().st_ctime <= cutoff]
    if not candidates:
        return []
    names = {p.relative_to(files.root).as_posix(): p for p in candidates}
    known: set[str] = set()
    with db.session() as session:
        chunk = sorted(names)
        for start in range(0, len(chunk), 500):
            query = select(ReleaseRow.result_path).where(
                ReleaseRow.result_path.in_(chunk[start : start + 500])
            )
            known.update(p for p in session.scalars(query) if p is not None)
    removed = [path for name, path in sorted(names.items()) if name not in known]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
