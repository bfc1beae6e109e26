"""Models: drafts built layer by layer (flow I), compiled specs (flow II), ownership.

The node rebuilds every model from the JSON spec and the layer whitelist in
`veil.nn`; no code and no pickle from a data scientist ever runs here. A draft obeys
the layer limit of a compiled spec as it grows. A model's weights are initialised and
written with no transaction open; its row appears in one short write after. Each
counts against its owner's quotas (`services.quotas`) until deleted: a model with its
checkpoints and private objects, a draft until compiled.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from veil._exceptions import Conflict, NotFound, SpecError
from veil.engine import DPTrainer
from veil.nn._config import Shape, check_input_shape
from veil.nn.layers import layer_from_dict, layer_to_dict
from veil.nn.spec import MAX_LAYERS, SPEC_FORMAT, ModelSpec, layer_output_shape
from veil.privacy import Cart, RdpCurve
from veil.server.db.base import new_id
from veil.server.db.engine import Database
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.models import DraftRow, ModelRow
from veil.server.services import ledger, quotas
from veil.server.services.checkpoints import stage_checkpoint
from veil.server.services.live_models import LiveModel, LiveModels
from veil.server.services.node import get_node
from veil.server.services.private_objects import delete_model_objects
from veil.server.storage.files import NodeFiles

__all__ = [
    "add_draft_layer",
    "CartCurves",
    "cart_epsilon",
    "compile_draft",
    "create_draft",
    "create_model",
    "delete_draft",
    "delete_model",
    "discard_drafts",
    "get_draft",
    "get_model",
    "list_models",
    "ModelFacts",
    "model_facts",
    "not_yours",
    "parse_spec",
    "sweep_deleted_models",
    "unpaid",
]


def create_draft(session: Session, *, user: UserRow) -> DraftRow:
    """A new empty draft, within the user's `max_drafts`; `session` is a write session."""
    quotas.claim(session, quotas.DRAFTS, user_id=user.id)
    draft = DraftRow(owner_id=user.id, layers=[])
    session.add(draft)
    session.commit()
    return draft


def delete_draft(session: Session, *, user: UserRow, draft_id: str) -> None:
    """Delete one of the caller's drafts; a compiled one's model stays."""
    session.delete(get_draft(session, user=user, draft_id=draft_id))
    session.commit()


def discard_drafts(session: Session, *, user: UserRow) -> int:
    """Delete the caller's uncompiled drafts (what `max_drafts` counts); returns how many."""
    mine = (DraftRow.owner_id == user.id, DraftRow.compiled_model_id.is_(None))
    deleted = session.execute(delete(DraftRow).where(*mine)).rowcount
    session.commit()
    return deleted


def get_draft(session: Session, *, user: UserRow, draft_id: str) -> DraftRow:
    draft = session.get(DraftRow, draft_id)
    if draft is None or draft.owner_id != user.id:
        raise NotFound(f"No model draft {draft_id!r} of yours.", draft_id=draft_id)
    return draft


def _draft_shapes(layers: list[dict[str, Any]]) -> Shape:
    """Infer shapes through a draft's layers; SpecError names the layer that does not fit."""
    built = [layer_from_dict(d) for d in layers]
    shape = check_input_shape("Model", built[0].input_shape)
    if shape is None:
        raise SpecError(
            f"The first layer ({built[0].name}) needs input_shape, e.g. (None, 1, 28, 28). "
            "Received: input_shape=None"
        )
    for index, layer in enumerate(built):
        shape = layer_output_shape(index, layer, shape)
    return shape


def add_draft_layer(
    session: Session, *, user: UserRow, draft_id: str, layer: dict[str, Any]
) -> Shape:
    """Append one layer after checking it fits; returns the draft's new output shape."""
    draft = get_draft(session, user=user, draft_id=draft_id)
    if draft.compiled_model_id is not None:
        raise SpecError("This draft was compiled already; start a new nn.Model(to=client).")
    if len(draft.layers) >= MAX_LAYERS:
        raise SpecError(
            f"A model has at most {MAX_LAYERS} layers. Received: layer {len(draft.layers) + 1} "
            "for this draft",
            max_layers=MAX_LAYERS,
        )
    canonical = layer_to_dict(layer_from_dict(layer))
    layers = [*draft.layers, canonical]
    shape = _draft_shapes(layers)
    draft.layers = layers
    session.commit()
    return shape


def compile_draft(
    db: Database,
    files: NodeFiles,
    *,
    user: UserRow,
    draft_id: str,
    options: dict[str, Any],
    live: LiveModels | None = None,
) -> ModelRow:
    with db.session() as session:
        draft = get_draft(session, user=user, draft_id=draft_id)
        layers = draft.layers
    if not layers:
        raise SpecError("A model needs at least one layer. Received: an empty draft.")
    first = layer_from_dict(layers[0])
    spec = {
        "format": SPEC_FORMAT,
        "input_shape": list(first.input_shape or ()),
        "layers": layers,
        **options,
    }
    return create_model(db, files, user=user, spec=spec, draft_id=draft_id, live=live)


def parse_spec(session: Session, spec: dict[str, Any]) -> ModelSpec:
    """Check a spec against the whitelist and the node's size limits."""
    node = get_node(session)
    return ModelSpec.from_dict(spec, max_params=node.max_params, max_flops=node.max_flops)


def create_model(
    db: Database,
    files: NodeFiles,
    *,
    user: UserRow,
    spec: dict[str, Any],
    draft_id: str | None = None,
    live: LiveModels | None = None,
) -> ModelRow:
    """Build the model from its spec, initialise weights on the node, empty cart.

    With `draft_id`, the draft is marked compiled in the same transaction (once only).
    With `live`, the new model stays in memory there for its first step or fit.
    """
    with db.session() as session:
        checked = parse_spec(session, spec)
    model_id = new_id()
    trainer, cart = DPTrainer(checked, device=live.device if live else "cpu"), Cart()
    staged = stage_checkpoint(files, model_id, trainer=trainer, cart=cart)
    zero = RdpCurve.zero().to_list()
    try:
        with db.write_session() as session:
            quotas.claim(session, quotas.MODELS, user_id=user.id)
            model = ModelRow(
                id=model_id,
                owner_id=user.id,
                spec=checked.to_dict(),
                version=0,
                cart_state={},
                cart_curve=zero,
                charged_curve=zero,
                steps=0,
            )
            session.add(model)
            if draft_id is not None:
                draft = get_draft(session, user=user, draft_id=draft_id)
                if draft.compiled_model_id is not None:
                    raise Conflict(
                        f"Draft {draft_id} was compiled already (model {draft.compiled_model_id}).",
                        model_id=draft.compiled_model_id,
                    )
                draft.compiled_model_id = model_id
            session.flush()
            staged.commit(session, files, model)
            session.commit()
    except BaseException:
        staged.discard()
        raise
    if live is not None:
        with live.lock(user.id, model_id):
            live.put(model_id, LiveModel(version=model.version, trainer=trainer, cart=cart))
    return model


def delete_model(
    db: Database, files: NodeFiles, *, user: UserRow, model_id: str, live: LiveModels
) -> None:
    """Delete the caller's idle model with its checkpoints, private objects and jobs, and
    the draft it was compiled from, freeing their quotas. Its releases stay in the
    ledger, paid: what was published stays spent, and its unpaid cart was never
    released, so it goes with the model. A model in training is refused (Conflict).
    """
    with live.lock(user.id, model_id):  # no step or evaluation of it is computing
        with db.write_session() as session:
            model = get_model(session, user=user, model_id=model_id, for_update=True)
            if model.busy_job_id is not None:
                raise Conflict(
                    f"Model {model_id} is training (job {model.busy_job_id}); cancel it "
                    "(model_ptr.cancel()) or wait for it, then delete it. Nothing was deleted.",
                    job_id=model.busy_job_id,
                )
            delete_model_objects(session, owner_id=user.id, model_id=model_id)
            compiled_from = (DraftRow.owner_id == user.id, DraftRow.compiled_model_id == model_id)
            session.execute(delete(DraftRow).where(*compiled_from))
            session.execute(delete(ModelRow).where(ModelRow.id == model_id))  # cascades
            session.commit()
        live.forget(model_id)
    # Files no row points at any more; a crash before this leaves them to the next
    # start's `sweep_deleted_models`.
    shutil.rmtree(files.model_dir(model_id), ignore_errors=True)


def sweep_deleted_models(db: Database, files: NodeFiles, *, grace_s: float = 60.0) -> list[Path]:
    """Delete the folders of models that no row names (a crash between a delete's commit
    and its files' removal, or a compile's files before a commit that never came).

    Run at start. A folder changed in the last `grace_s` seconds is kept: another process
    serving the same data directory may be compiling that model now.
    """
    folder = files.model_dir("-").parent
    if not folder.is_dir():
        return []
    cutoff = time.time() - grace_s
    candidates = {p.name: p for p in folder.iterdir() if p.is_dir() and p.stat().st_mtime <= cutoff}
    known: set[str] = set()
    with db.session() as session:
        names = sorted(candidates)
        for start in range(0, len(names), 500):
            query = select(ModelRow.id).where(ModelRow.id.in_(names[start : start + 500]))
            known.update(session.scalars(query))
    removed = [path for name, path in sorted(candidates.items()) if name not in known]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def get_model(
    session: Session, *, user: UserRow, model_id: str, for_update: bool = False
) -> ModelRow:
    """The caller's own model; another user's model does not exist for it.

    `for_update` locks the row (PostgreSQL) so a concurrent publish cannot change what
    was charged between our read and our commit; SQLite's write session already does.
    """
    model = session.get(
        ModelRow, model_id, with_for_update=for_update, populate_existing=for_update
    )
    if model is None or model.owner_id != user.id:
        raise not_yours(model_id)
    return model


@dataclass(frozen=True)
class ModelFacts:
    """A model's version and the job training it, if any: what a step checks first."""

    id: str
    version: int
    busy_job_id: str | None


_FACTS = select(ModelRow.owner_id, ModelRow.version, ModelRow.busy_job_id).where(
    ModelRow.id == bindparam("b_id")
)  # built once: every step runs it


def model_facts(session: Session, *, user: UserRow, model_id: str) -> ModelFacts:
    """`get_model`'s answer in three columns: one light query, no JSON to decode."""
    found = session.connection().execute(_FACTS, {"b_id": model_id}).first()
    if found is None or found.owner_id != user.id:
        raise not_yours(model_id)
    return ModelFacts(id=model_id, version=found.version, busy_job_id=found.busy_job_id)


def not_yours(model_id: str) -> NotFound:
    return NotFound(f"No model {model_id!r} of yours.", model_id=model_id)


def list_models(session: Session, *, user: UserRow) -> list[ModelRow]:
    query = select(ModelRow).where(ModelRow.owner_id == user.id).order_by(ModelRow.created_at)
    return list(session.scalars(query))


class CartCurves(Protocol):
    """A model's two curves: a `ModelRow`, or a row of just these columns."""

    cart_curve: list[float]
    charged_curve: list[float]


def unpaid(model: CartCurves) -> RdpCurve:
    """What the model's cart holds beyond what its releases have charged."""
    return RdpCurve.from_list(model.cart_curve) - RdpCurve.from_list(model.charged_curve)


def cart_epsilon(
    spent: RdpCurve, model: CartCurves, *, delta: float, spent_epsilon: float | None = None
) -> float:
    """The model's cart: how much publishing it now would add to the epsilon spent."""
    return ledger.added_epsilon(spent, unpaid(model), delta=delta, spent_epsilon=spent_epsilon)
