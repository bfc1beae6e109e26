"""Models: drafts (flow I), compile (flow II), fit jobs, progress, step (flow III), evaluate."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from veil.nn.spec import ModelSpec
from veil.server.api.deps import ContextDep, CurrentUser, SessionDep
from veil.server.api.schemas import Strict
from veil.server.db.tables.models import ModelRow, PrivateObjectRow
from veil.server.services import fits, ledger, models, releases, steps
from veil.server.services.node import get_node

router = APIRouter(prefix="/models", tags=["models"])


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


class FitIn(Strict):
    x: str
    y: str
    max_iter: int = Field(default=10)
    batch_size: int = Field(default=100)
    validation_split: float = 0.0
    target_epsilon: float | None = None

    def plan_args(self) -> dict[str, Any]:
        """The planned fit, as `fits.plan_fit` and `fits.submit_fit` take it."""
        return {
            "x_id": self.x,
            "y_id": self.y,
            "max_iter": self.max_iter,
            "batch_size": self.batch_size,
            "validation_split": self.validation_split,
            "target_epsilon": self.target_epsilon,
        }


class DataIn(Strict):
    x: str
    y: str


class StepIn(DataIn):
    validation_split: float = 0.0
    batch_size: int | None = None


class EvaluateIn(DataIn):
    epsilon: float


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


class ObjectOut(BaseModel):
    id: str
    kind: str
    shape: list[int]
    model_id: str


class StepOut(BaseModel):
    loss: ObjectOut
    predictions: ObjectOut


def _model_out(model: ModelRow, session: Session) -> ModelOut:
    spec = ModelSpec.from_dict(model.spec)
    delta = get_node(session).delta
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


@router.post("/drafts", status_code=201)
def create_draft(session: SessionDep, user: CurrentUser) -> dict[str, str]:
    return {"id": models.create_draft(session, user=user).id}


@router.post("/drafts/{draft_id}/layers")
def add_layer(
    draft_id: str, body: LayerIn, session: SessionDep, user: CurrentUser
) -> dict[str, Any]:
    shape = models.add_draft_layer(session, user=user, draft_id=draft_id, layer=body.layer)
    return {"output_shape": list(shape)}


@router.post("/drafts/{draft_id}/compile", status_code=201)
def compile_draft(
    draft_id: str, body: CompileIn, ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> ModelOut:
    model = models.compile_draft(
        session, ctx.files, user=user, draft_id=draft_id, options=body.model_dump()
    )
    return _model_out(model, session)


@router.post("", status_code=201)
def create_model(body: SpecIn, ctx: ContextDep, session: SessionDep, user: CurrentUser) -> ModelOut:
    model = models.create_model(session, ctx.files, user=user, spec=body.spec)
    return _model_out(model, session)


@router.get("")
def list_models(session: SessionDep, user: CurrentUser) -> list[ModelOut]:
    return [_model_out(m, session) for m in models.list_models(session, user=user)]


@router.get("/{model_id}")
def read_model(model_id: str, session: SessionDep, user: CurrentUser) -> ModelOut:
    model = models.get_model(session, user=user, model_id=model_id)
    return _model_out(model, session)


@router.post("/{model_id}/quote")
def quote(
    model_id: str, body: FitIn, ctx: ContextDep, session: SessionDep, user: CurrentUser
) -> QuoteOut:
    model = models.get_model(session, user=user, model_id=model_id)
    plan = fits.plan_fit(
        session,
        ctx.files,
        ctx.arrays,
        user=user,
        model=model,
        **body.plan_args(),
    )
    return QuoteOut(
        cost=plan.cost,
        cart=plan.cart,
        cart_after=plan.cart_after,
        spent=plan.spent,
        sigma=plan.quote.sigma,
        steps=plan.quote.steps,
        q=plan.quote.q,
        delta=get_node(session).delta,
    )


@router.post("/{model_id}/fit", status_code=202)
async def fit(model_id: str, body: FitIn, ctx: ContextDep, user: CurrentUser) -> dict[str, Any]:
    def submit() -> dict[str, Any]:
        with ctx.db.write_session() as session:
            job = fits.submit_fit(
                session,
                ctx.files,
                ctx.arrays,
                user=user,
                model_id=model_id,
                **body.plan_args(),
            )
            return {"job_id": job.id, "status": job.status, **job.params}

    out = await run_in_threadpool(submit)
    ctx.runner.submit(out["job_id"])
    return out


@router.get("/{model_id}/progress")
def progress(model_id: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    return fits.progress(session, user=user, model_id=model_id)


@router.post("/{model_id}/cancel")
def cancel(model_id: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    job = fits.cancel_fit(session, user=user, model_id=model_id)
    return {"job_id": job.id, "status": job.status, "cancel_requested": job.cancel_requested}


@router.post("/{model_id}/step")
def step(model_id: str, body: StepIn, ctx: ContextDep, user: CurrentUser) -> StepOut:
    loss, preds = steps.step(
        ctx,
        user=user,
        model_id=model_id,
        x_id=body.x,
        y_id=body.y,
        validation_split=body.validation_split,
        batch_size=body.batch_size,
    )
    return StepOut(loss=_object_out(loss), predictions=_object_out(preds))


@router.post("/{model_id}/evaluate")
def evaluate(model_id: str, body: EvaluateIn, ctx: ContextDep, user: CurrentUser) -> EvaluateOut:
    release = steps.evaluate(
        ctx, user=user, model_id=model_id, x_id=body.x, y_id=body.y, epsilon=body.epsilon
    )
    return EvaluateOut(
        release_id=release.id,
        cost=release.epsilon_added,
        spent_after=release.epsilon_after,
        **releases.released_values(release.result or {"values": {}}),
    )
