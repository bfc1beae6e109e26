"""Models: drafts (flow I), compile (flow II), fit jobs, progress, step (flow III), evaluate;
deleting them, to free the caller's quotas."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from veil.nn.spec import ModelSpec
from veil.server.api.deps import (
    ContextDep,
    CurrentUser,
    ReadSessionDep,
    SessionDep,
    TokenDep,
    get_current_user,
)
from veil.server.api.errors import responses
from veil.server.api.routes.assets import SliceIn
from veil.server.api.schemas import MIN_POSITIVE, Integral, JsonInt, Strict
from veil.server.db.tables.models import ModelRow, PrivateObjectRow
from veil.server.services import fits, ledger, models, private_objects, progress, releases, steps
from veil.server.services.node import node_delta
from veil.server.settings import MAX_DB_INT

router = APIRouter(prefix="/models", tags=["models"])

_MODEL = responses(404)  # every route below names a model, or a draft, of the caller


class LayerIn(Strict):
    layer: dict[str, Any]


class CompileIn(Strict):
    loss: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    loss_bound: float | None = None


class SpecIn(Strict):
    spec: dict[str, Any]


class DataIn(Strict):
    x: str = Field(max_length=64, description="pointer id of the features")
    y: str = Field(max_length=64, description="pointer id of the labels")


class FitIn(DataIn):
    max_iter: JsonInt = Field(default=10, ge=1, le=MAX_DB_INT, description="epochs")
    batch_size: JsonInt = Field(default=100, ge=1, le=MAX_DB_INT)
    validation_split: float = Field(default=0.0, ge=0, lt=1)
    target_epsilon: float | None = Field(default=None, ge=MIN_POSITIVE)
    rows_per_subject: JsonInt | None = Field(
        default=None,
        ge=1,
        le=MAX_DB_INT,
        description="where the dataset's unit is the data subject: this many of a sampled "
        "subject's rows per step, at random, padded where it owns fewer (by default the "
        "dataset's rows per subject, rounded up), so that a step's work is public",
    )

    def plan_args(self) -> dict[str, Any]:
        """The planned fit, as `fits.quote` and `fits.submit_fit` take it."""
        return {
            "x_id": self.x,
            "y_id": self.y,
            "max_iter": self.max_iter,
            "batch_size": self.batch_size,
            "validation_split": self.validation_split,
            "target_epsilon": self.target_epsilon,
            "rows_per_subject": self.rows_per_subject,
        }


class BatchIn(DataIn):
    """x and y, each sliced here if `x_rows` (`y_rows`) is given, exactly as
    `POST /assets/{id}/slice` would slice it, but with no view stored and no request of
    its own: a batch names its rows in the step or evaluation that reads it."""

    x_rows: SliceIn | None = Field(default=None, description="rows of x, as x[start:stop:step]")
    y_rows: SliceIn | None = Field(default=None, description="rows of y, as y[start:stop:step]")

    def batch(self) -> steps.Batch:
        rows = {"x_rows": _slice(self.x_rows), "y_rows": _slice(self.y_rows)}
        return steps.Batch(x_id=self.x, y_id=self.y, **rows)


def _slice(rows: SliceIn | None) -> slice | None:
    return None if rows is None else slice(rows.start, rows.stop, rows.step)


class StepIn(BatchIn):
    validation_split: float = Field(default=0.0, ge=0, lt=1)
    batch_size: Annotated[int, Field(ge=1, le=MAX_DB_INT), Integral] | None = None


class EvaluateIn(BatchIn):
    epsilon: float = Field(ge=MIN_POSITIVE)


class ModelOut(BaseModel):
    id: str
    spec: dict[str, Any]
    version: int
    steps: int
    output_shape: list[int | None]
    param_count: int
    busy_job_id: str | None
    cart: float  # what publishing the model now would add to your epsilon spent


class QuoteOut(BaseModel):
    """A planned fit's price: `cost` is what it adds to `cart`, what publishing the
    model would add to your epsilon `spent`; `cart_after` is the cart after the fit."""

    cost: float
    cart: float
    cart_after: float
    spent: float
    sigma: float
    steps: int
    q: float
    delta: float
    unit: str  # what q samples and epsilon protects: "row" or "subject"
    n_train: int  # training units (rows, or data subjects)


class EvaluateOut(BaseModel):
    """Noised metrics, each with its noise std and its value clipped to where the true
    one lies (post-processing, free)."""

    release_id: str
    cost: float
    spent_after: float
    loss: float
    loss_std: float
    loss_clipped: float
    accuracy: float | None = None
    accuracy_std: float | None = None
    accuracy_clipped: float | None = None


class DraftOut(BaseModel):
    id: str


class LayerOut(BaseModel):
    output_shape: list[int | None]


class FitOut(BaseModel):
    job_id: str
    status: str
    x: str
    y: str
    max_iter: int
    batch_size: int
    validation_split: float
    sigma: float
    val_sigma: float | None
    q: float
    steps: int
    target_epsilon: float | None
    quoted_cost: float  # what the fit adds to the model's cart, as quoted
    n_train: int  # training units: rows, or data subjects
    unit: str = "row"  # the dataset's privacy unit: "row" or "subject"
    rows_per_subject: int | None = None


class EpochOut(BaseModel):
    """One epoch's validation metrics: released (noised, charged) values, or withheld."""

    model_config = ConfigDict(extra="allow")  # `val_loss`, `val_loss_std`, ... when released

    epoch: int
    released: bool | None = None
    release_id: str | None = None
    withheld: str | None = None


class ProgressOut(BaseModel):
    model_id: str
    status: str
    spent: float  # your epsilon spent
    cart: float  # what publishing the model now would add to it
    total_steps: int
    job_id: str | None
    epoch: int | None
    max_iter: int | None
    step: int | None
    steps: int | None
    expected_samples: int | None  # rows, or subjects where that is the unit
    unit: str | None = None
    elapsed: float | None
    sigma: float | None
    error: str | None
    queue_position: int | None
    restarts: int
    metrics: list[EpochOut]


class CancelOut(BaseModel):
    job_id: str
    status: str
    cancel_requested: bool


class ObjectOut(BaseModel):
    id: str
    kind: str
    shape: list[int]
    model_id: str


class StepOut(BaseModel):
    loss: ObjectOut
    predictions: ObjectOut


class DeletedOut(BaseModel):
    deleted: int  # how many went


def _model_out(model: ModelRow, session: Session) -> ModelOut:
    spec = ModelSpec.from_dict(model.spec)
    delta = node_delta(session)
    spent = ledger.spent_curve(session, user_id=model.owner_id)
    return ModelOut(
        id=model.id,
        spec=model.spec,
        version=model.version,
        steps=model.steps,
        output_shape=list(spec.output_shape),
        param_count=spec.param_count,
        busy_job_id=model.busy_job_id,
        cart=models.cart_epsilon(spent, model, delta=delta),
    )


def _object_out(row: PrivateObjectRow) -> ObjectOut:
    return ObjectOut(id=row.id, kind=row.kind, shape=row.shape, model_id=row.model_id)


# Flow III's routes come first: a request is matched against the routes in order
# (twice, by FastAPI), and a data scientist's loop calls these most.
@router.post("/{model_id}/step", responses=responses(404, 409, 429))
async def step(model_id: str, body: StepIn, ctx: ContextDep, token: TokenDep) -> StepOut:
    def run() -> StepOut:
        loss, preds = steps.step(
            ctx,
            user=get_current_user(ctx, token),
            model_id=model_id,
            batch=body.batch(),
            validation_split=body.validation_split,
            batch_size=body.batch_size,
        )
        return StepOut(loss=_object_out(loss), predictions=_object_out(preds))

    # Flow III steps come one after another: the whole request (who asks, the step, the
    # answer) takes one hop to a worker thread, where each dependency would take its own.
    return await run_in_threadpool(run)


@router.post("/{model_id}/evaluate", responses=responses(402, 404, 409, 429))
def evaluate(model_id: str, body: EvaluateIn, ctx: ContextDep, user: CurrentUser) -> EvaluateOut:
    release = steps.evaluate(
        ctx, user=user, model_id=model_id, batch=body.batch(), epsilon=body.epsilon
    )
    return EvaluateOut(
        release_id=release.id,
        cost=release.epsilon_added,
        spent_after=release.epsilon_after,
        **releases.released_values(release.result or {"values": {}}),
    )


@router.post("/drafts", status_code=201, responses=responses(409))
def create_draft(session: SessionDep, user: CurrentUser) -> DraftOut:
    return DraftOut(id=models.create_draft(session, user=user).id)


@router.delete("/drafts")
def discard_drafts(session: SessionDep, user: CurrentUser) -> DeletedOut:
    """Delete your uncompiled drafts, to free `max_drafts`."""
    return DeletedOut(deleted=models.discard_drafts(session, user=user))


@router.delete("/drafts/{draft_id}", status_code=204, responses=_MODEL)
def delete_draft(draft_id: str, session: SessionDep, user: CurrentUser) -> None:
    models.delete_draft(session, user=user, draft_id=draft_id)


@router.post("/drafts/{draft_id}/layers", responses=_MODEL)
def add_layer(draft_id: str, body: LayerIn, session: SessionDep, user: CurrentUser) -> LayerOut:
    shape = models.add_draft_layer(session, user=user, draft_id=draft_id, layer=body.layer)
    return LayerOut(output_shape=list(shape))


@router.post("/drafts/{draft_id}/compile", status_code=201, responses=responses(404, 409))
def compile_draft(
    draft_id: str, body: CompileIn, ctx: ContextDep, session: ReadSessionDep, user: CurrentUser
) -> ModelOut:
    model = models.compile_draft(
        ctx.db, ctx.files, user=user, draft_id=draft_id, options=body.model_dump(), live=ctx.live
    )
    return _model_out(model, session)


@router.post("", status_code=201, responses=responses(409))
def create_model(
    body: SpecIn, ctx: ContextDep, session: ReadSessionDep, user: CurrentUser
) -> ModelOut:
    model = models.create_model(ctx.db, ctx.files, user=user, spec=body.spec, live=ctx.live)
    return _model_out(model, session)


@router.get("")
def list_models(session: SessionDep, user: CurrentUser) -> list[ModelOut]:
    return [_model_out(m, session) for m in models.list_models(session, user=user)]


@router.get("/{model_id}", responses=_MODEL)
def read_model(model_id: str, session: SessionDep, user: CurrentUser) -> ModelOut:
    model = models.get_model(session, user=user, model_id=model_id)
    return _model_out(model, session)


@router.delete("/{model_id}", status_code=204, responses=responses(404, 409))
def delete_model(model_id: str, ctx: ContextDep, user: CurrentUser) -> None:
    """Delete your model, its checkpoints and private objects; its releases stay."""
    models.delete_model(ctx.db, ctx.files, user=user, model_id=model_id, live=ctx.live)


@router.delete("/{model_id}/objects", responses=_MODEL)
def delete_model_objects(model_id: str, session: SessionDep, user: CurrentUser) -> DeletedOut:
    """Delete every private object of your model (its steps' losses and predictions)."""
    models.get_model(session, user=user, model_id=model_id, for_update=True)
    deleted = private_objects.delete_model_objects(session, owner_id=user.id, model_id=model_id)
    session.commit()
    return DeletedOut(deleted=deleted)


@router.post("/{model_id}/quote", responses=responses(404, 429))
def quote(
    model_id: str, body: FitIn, ctx: ContextDep, session: ReadSessionDep, user: CurrentUser
) -> QuoteOut:
    with ctx.compute.admitted(user.id):  # calibrating a fit's noise takes a while
        plan = fits.quote(
            session, ctx.files, ctx.arrays, user=user, model_id=model_id, **body.plan_args()
        )
    return QuoteOut(
        cost=plan.cost,
        cart=plan.cart,
        cart_after=plan.cart_after,
        spent=plan.spent,
        sigma=plan.quote.sigma,
        steps=plan.quote.steps,
        q=plan.quote.q,
        delta=node_delta(session),
        unit=plan.params["unit"],
        n_train=plan.params["n_train"],
    )


@router.post("/{model_id}/fit", status_code=202, responses=responses(402, 404, 409))
def fit(model_id: str, body: FitIn, ctx: ContextDep, user: CurrentUser) -> FitOut:
    job = fits.submit_fit(
        ctx.db, ctx.files, ctx.arrays, user=user, model_id=model_id, **body.plan_args()
    )
    ctx.runner.submit()
    return FitOut(job_id=job.id, status=job.status, **job.params)


@router.get("/{model_id}/progress", responses=_MODEL)
async def read_progress(
    model_id: str,
    ctx: ContextDep,
    user: CurrentUser,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=progress.MAX_WAIT_S,
            description="seconds to wait for a queued or running job to move before "
            "answering; 0 answers at once",
        ),
    ] = 0.0,
) -> ProgressOut:
    found = await progress.progress_after(
        ctx.db, ctx.signals, user=user, model_id=model_id, wait=wait
    )
    return ProgressOut.model_validate(asdict(found))


@router.post("/{model_id}/cancel", responses=_MODEL)
def cancel(model_id: str, session: SessionDep, user: CurrentUser, ctx: ContextDep) -> CancelOut:
    job = fits.cancel_fit(session, user=user, model_id=model_id)
    ctx.signals.notify(model_id)
    return CancelOut(job_id=job.id, status=job.status, cancel_requested=job.cancel_requested)
