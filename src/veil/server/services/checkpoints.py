"""Save and load a model's checkpoint: weights, optimizer state and cart, as one version.

A version lives in one of two places:

- files (fits and compiling, of checkpoints over `IN_ROW_BYTES`; releases of a file
  version): written first, with no transaction open, under temporary names
  (`stage_checkpoint`); then, in the caller's short transaction with the model row
  locked, they are renamed to version v+1 and the row is pointed at v+1 with its cart
  curve (`StagedCheckpoint.commit`): a crash in between leaves the row at v with v's
  files, so weights and cart always match, and no lock is held while tensors are
  written. Files two versions old are removed after the commit; the previous version
  stays for a publish that read it.
- a row of `model_states` (flow III steps, `encode_state` and `commit_step`): one
  safetensors blob of the trainer inserted in the step's own transaction, which also
  points the model at it and stores its cart as the rows the step changed
  (`services.cart_changes`). A step is small and frequent; this way it writes and
  syncs no file at all, and the database alone makes weights, cart and results move
  together. A fit's or a new model's checkpoint up to `IN_ROW_BYTES` is a row too,
  with its cart whole in it (`StagedState`). States two versions old are deleted by the
  commit that makes a new version. (A release that charges rows of a step's version
  stores its new version's cart whole in its state, `save_cart_version`.)

Readers (`load_trainer`, `load_cart`, `save_weights`, `save_cart_version`) look for the
model's version in `model_states` first, then in files.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, safe_open
from safetensors.torch import save_file as save_torch
from sqlalchemy import JSON, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from veil._exceptions import Conflict
from veil.engine import DPTrainer
from veil.nn.spec import ModelSpec
from veil.privacy import Cart, SourceArrays
from veil.server.db.base import utcnow
from veil.server.db.tables.models import ModelRow, ModelStateRow
from veil.server.services.cart_changes import CartChain, CartChange, load_chain, record_change
from veil.server.storage import blobs
from veil.server.storage.files import NodeFiles, atomic_write, link_into, sync_files

__all__ = [
    "commit_step",
    "decode_state",
    "encode_state",
    "load_cart",
    "load_cart_chain",
    "loading_version",
    "load_trainer",
    "prune_old_versions",
    "StagedCheckpoint",
    "StagedState",
    "save_cart_arrays",
    "save_cart_version",
    "save_weights",
    "stage_checkpoint",
]

_STAGED = ".staged-"
_STAGED_GRACE_S = 3600.0  # a staged file this old belongs to a process that died
_PRUNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="veil-prune")


_CART = "cart."  # the cart's arrays in a state blob: cart.rho_i, cart.pool_i
_PARAM = "param."  # the trainer's weights among its checkpoint tensors


def _flat_cart(cart: Cart) -> dict[str, np.ndarray]:
    """The cart's per-row arrays by flat name (`rho_i`, `pool_i` per source, sorted keys)."""
    arrays = cart.arrays()
    flat: dict[str, np.ndarray] = {}
    for index, key in enumerate(sorted(arrays)):
        flat[f"rho_{index}"] = arrays[key]["rho"]
        flat[f"pool_{index}"] = arrays[key]["pool"]
    return flat


def encode_state(trainer: DPTrainer) -> bytes:
    """The trainer's checkpoint as one blob, for `commit_step` (whose cart goes to
    `cart_changes`, as the rows the step changed)."""
    tensors, meta = trainer.checkpoint()
    return blobs.pack({k: t.detach().cpu().numpy() for k, t in tensors.items()}, meta)


def _encode(arrays: dict[str, np.ndarray], meta: dict[str, Any], cart: Cart) -> bytes:
    flat = {_CART + name: array for name, array in _flat_cart(cart).items()}
    return blobs.pack(arrays | flat, meta)


def decode_state(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(the trainer's arrays, and the cart's under `cart.` if it holds it; the trainer's
    meta)."""
    return blobs.unpack(data)


def _trainer_part(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: a for k, a in arrays.items() if not k.startswith(_CART)}


def _state(session: Session, model: ModelRow) -> ModelStateRow | None:
    """The model's current version, when a step stored it in the database."""
    return session.get(ModelStateRow, (model.id, model.version))


# A step commits with statements built once: building and caching a statement per call
# cost more than running it.
_models, _states = ModelRow.__table__, ModelStateRow.__table__
_STEP = (
    update(_models)
    .where(
        _models.c.id == bindparam("b_id"),
        _models.c.version == bindparam("b_version"),
        _models.c.owner_id == bindparam("b_owner"),
        _models.c.busy_job_id.is_(None),
    )
    .values(
        version=bindparam("b_next"),
        steps=_models.c.steps + 1,
        cart_state=bindparam("b_cart_state", type_=JSON),
        cart_curve=bindparam("b_cart_curve", type_=JSON),
        updated_at=bindparam("b_now", type_=_models.c.updated_at.type),
    )
)
_INSERT_STATE = insert(_states)
# The state before last becomes the new one: every commit of a version deletes the
# states older than the one before it, so at version v only v and v-1 are stored.
_RECYCLE_STATE = (
    update(_states)
    .where(_states.c.model_id == bindparam("b_id"), _states.c.version == bindparam("b_old"))
    .values(version=bindparam("b_new"), data=bindparam("b_data"))
)
_FORGET = delete(_states).where(
    _states.c.model_id == bindparam("b_id"), _states.c.version < bindparam("b_below")
)


def commit_step(
    session: Session,
    *,
    owner_id: str,
    model_id: str,
    version: int,
    data: bytes,
    cart: Cart,
    change: CartChange,
) -> bool:
    """Make `data` (from `encode_state`) with `cart` (stored as `change`) version+1 of
    the model, one step more, if its row is still at `version`, owned by `owner_id` and
    idle; False, with nothing written, if not. One conditional UPDATE checks and locks
    the row; the caller commits."""
    pointer = _pointer(version + 1, cart)
    moved = session.connection().execute(
        _STEP,
        {
            "b_id": model_id,
            "b_version": version,
            "b_owner": owner_id,
            "b_next": version + 1,
            "b_cart_state": pointer["cart_state"],
            "b_cart_curve": pointer["cart_curve"],
            "b_now": pointer["updated_at"],
        },
    )
    if moved.rowcount != 1:
        return False
    recycled = session.connection().execute(
        _RECYCLE_STATE,
        {"b_id": model_id, "b_old": version - 1, "b_new": version + 1, "b_data": data},
    )
    if recycled.rowcount != 1:  # v-1 was not a state (a fit's files, a new model)
        session.connection().execute(
            _INSERT_STATE, {"model_id": model_id, "version": version + 1, "data": data}
        )
        _forget_states(session, model_id, version + 1)
    record_change(session, model_id=model_id, change=change)
    return True


@contextlib.contextmanager
def loading_version(session: Session, *, model_id: str, version: int) -> Iterator[None]:
    """Load version `version` of a model (read in `session`) in the block. Nothing keeps
    a version a reader saw from being pruned once two newer ones exist (another node
    process may step the model meanwhile): its files or state then being gone is a
    Conflict to retry, not a fault, if the model moved on (asked on a connection of its
    own, which sees what `session`'s snapshot may not)."""
    try:
        yield
    except FileNotFoundError:
        with session.get_bind().connect() as connection:
            query = select(ModelRow.version).where(ModelRow.id == model_id)
            now = connection.execute(query).scalar_one_or_none()
        if now == version:
            raise
        raise Conflict(
            f"Model {model_id} changed while this request read it (version {version} -> "
            f"{now}); nothing was trained or charged. Try again.",
            model_id=model_id,
        ) from None


def load_cart(session: Session, files: NodeFiles, model: ModelRow) -> Cart:
    """The cart of the model's current version."""
    return load_cart_chain(session, files, model)[0]


def load_cart_chain(
    session: Session, files: NodeFiles, model: ModelRow
) -> tuple[Cart, CartChain | None]:
    """The cart of the model's current version, and its chain in `cart_changes` when a
    step made that version (None when the cart is kept whole in a state or files)."""
    cart, chain = Cart(), None
    arrays: Mapping[str, SourceArrays] = {}
    if model.cart_state["sources"]:
        found = load_chain(session, model_id=model.id, version=model.version)
        if found is not None:
            arrays, chain = found
        else:
            arrays = _whole_cart(session, files, model)
    cart.load_state_dict(model.cart_state, arrays)
    return cart, chain


def _whole_cart(session: Session, files: NodeFiles, model: ModelRow) -> dict[str, SourceArrays]:
    """The cart's arrays kept whole with the version: in its state, or in its files."""
    state = _state(session, model)
    if state is not None:
        parts, _ = decode_state(state.data)
        stored = {k[len(_CART) :]: a for k, a in parts.items() if k.startswith(_CART)}
    else:
        with np.load(files.cart_arrays(model.id, model.version), allow_pickle=False) as npz:
            stored = {name: npz[name] for name in npz.files}
    return {
        key: {"rho": stored[f"rho_{index}"], "pool": stored[f"pool_{index}"]}
        for index, key in enumerate(sorted(model.cart_state["sources"]))
    }


def save_cart_arrays(path: Path, cart: Cart, *, sync: bool = True) -> None:
    """The cart's per-row arrays as one .npz (`rho_i`, `pool_i` per source, sorted keys)."""
    flat = _flat_cart(cart)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **flat)

    atomic_write(path, write, sync=sync)


def load_trainer(
    session: Session, files: NodeFiles, model: ModelRow, *, device: str = "cpu"
) -> DPTrainer:
    """The model at its current version. Never seeded: its noise and sampling are secure."""
    trainer = DPTrainer(ModelSpec.from_dict(model.spec), device=device)
    state = _state(session, model)
    if state is not None:
        arrays, meta = decode_state(state.data)
        tensors = {k: torch.from_numpy(a) for k, a in _trainer_part(arrays).items()}
    else:
        path = files.optimizer(model.id, model.version)
        tensors = load_file(path)
        with safe_open(path, framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("veil", "{}"))
    trainer.load_checkpoint(tensors, meta)
    return trainer


def save_weights(session: Session, files: NodeFiles, model: ModelRow, target: Path) -> bool:
    """Put the weights of the model's current version at `target`, on disk (safetensors
    of {name: float32 array}, what publish hands out); False if that version has none."""
    state = _state(session, model)
    if state is None:
        source = files.weights(model.id, model.version)
        if not source.is_file():
            return False
        link_into(source, target)  # synced when it was written
        return True
    arrays, _ = decode_state(state.data)
    weights = {k[len(_PARAM) :]: a for k, a in arrays.items() if k.startswith(_PARAM)}
    atomic_write(target, lambda tmp: save_numpy(weights, str(tmp)))
    return True


def _pointer(version: int, cart: Cart) -> dict[str, Any]:
    """The model row's columns that point it at `version` with `cart`."""
    return {
        "version": version,
        "cart_state": dict(cart.state_dict()),
        "cart_curve": cart.curve().to_list(),
        "updated_at": utcnow(),
    }


def _forget_states(session: Session, model_id: str, version: int) -> None:
    """Delete the states older than the one before `version`: the previous version
    stays for a reader that saw it (as its files do)."""
    session.connection().execute(_FORGET, {"b_id": model_id, "b_below": version - 1})


def _point_at(
    session: Session, model: ModelRow, version: int, cart: Cart, steps_added: int
) -> None:
    for column, value in _pointer(version, cart).items():
        setattr(model, column, value)
    model.steps = model.steps + steps_added
    _forget_states(session, model.id, version)


@dataclass(frozen=True)
class StagedCheckpoint:
    """A checkpoint written under temporary names, waiting to become a model's version."""

    weights: Path
    optimizer: Path
    cart_arrays: Path
    cart: Cart

    def commit(
        self, session: Session, files: NodeFiles, model: ModelRow, *, steps_added: int = 0
    ) -> None:
        """Rename the files to version v+1 and point the row at it; the caller holds the
        row locked and commits. Renames are O(1), whatever the model's size."""
        version = model.version + 1
        os.replace(self.weights, files.weights(model.id, version))
        os.replace(self.optimizer, files.optimizer(model.id, version))
        os.replace(self.cart_arrays, files.cart_arrays(model.id, version))
        _point_at(session, model, version, self.cart, steps_added)

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return (self.weights, self.optimizer, self.cart_arrays)

    def discard(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class StagedState:
    """A small checkpoint encoded as one `model_states` blob (the cart whole in it),
    waiting to become a model's version in the caller's transaction."""

    data: bytes
    cart: Cart

    def commit(
        self, session: Session, files: NodeFiles, model: ModelRow, *, steps_added: int = 0
    ) -> None:
        """Insert the state as version v+1 and point the row at it; the caller holds the
        row locked and commits."""
        version = model.version + 1
        session.connection().execute(
            _INSERT_STATE, {"model_id": model.id, "version": version, "data": self.data}
        )
        _point_at(session, model, version, self.cart, steps_added)

    def discard(self) -> None:
        """Nothing was written."""


# A checkpoint up to this size (weights, optimizer state and cart) becomes a row in the
# transaction that commits it, as a step's does: for the quick MLP fit of
# `benchmarks/training.py` writing and syncing three files cost more than the row.
# Larger ones are files, written with no transaction open.
IN_ROW_BYTES = 4 << 20


def stage_checkpoint(
    files: NodeFiles, model_id: str, *, trainer: DPTrainer, cart: Cart, sync: bool = True
) -> StagedCheckpoint | StagedState:
    """Encode the trainer's weights and optimizer state and the cart; call outside any
    transaction, then `commit` (or `discard`). Up to `IN_ROW_BYTES` they wait in memory
    for the commit; larger, they are written to files, synced together before it
    returns (with `sync=False` the caller syncs `paths`, with its other files, before
    the commit)."""
    tensors, meta = trainer.checkpoint()
    size = sum(t.nbytes for t in tensors.values()) + sum(
        a.nbytes for a in _flat_cart(cart).values()
    )
    if size <= IN_ROW_BYTES:
        arrays = {name: t.detach().cpu().numpy() for name, t in tensors.items()}
        return StagedState(data=_encode(arrays, meta, cart), cart=cart.copy())
    folder = files.model_dir(model_id)
    stem = f"{_STAGED}{uuid.uuid4().hex}"
    staged = StagedCheckpoint(
        weights=folder / f"{stem}.weights.safetensors",
        optimizer=folder / f"{stem}.optimizer.safetensors",
        cart_arrays=folder / f"{stem}.cart.npz",
        cart=cart.copy(),
    )
    try:
        weights = trainer.get_weights()
        atomic_write(staged.weights, lambda tmp: save_numpy(weights, str(tmp)), sync=False)
        contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        atomic_write(
            staged.optimizer,
            lambda tmp: save_torch(contiguous, str(tmp), metadata={"veil": json.dumps(meta)}),
            sync=False,
        )
        save_cart_arrays(staged.cart_arrays, staged.cart, sync=False)
        if sync:
            sync_files(staged.paths)
    except BaseException:
        staged.discard()
        raise
    return staged


def save_cart_version(session: Session, files: NodeFiles, model: ModelRow, *, cart: Cart) -> None:
    """Version v+1 with v's weights and optimizer state (linked: they did not change)
    and a new cart, for a release that charged rows; the caller commits."""
    version = model.version + 1
    state = _state(session, model)
    if state is not None:
        arrays, meta = decode_state(state.data)
        data = _encode(_trainer_part(arrays), meta, cart)
        session.add(ModelStateRow(model_id=model.id, version=version, data=data))
    else:
        for path_of in (files.weights, files.optimizer):
            link_into(path_of(model.id, model.version), path_of(model.id, version))
        save_cart_arrays(files.cart_arrays(model.id, version), cart)
    _point_at(session, model, version, cart, 0)


def prune_old_versions(files: NodeFiles, model_id: str, version: int) -> None:
    """Remove checkpoints older than the previous version, and staged files a process
    that died left behind (call after commit).

    Runs on a background thread: unlinking on a journaled file system costs as much as
    a step, and nothing waits for it. Only versions below the previous one go, never a
    newer one that committed meanwhile, so a late or repeated prune is harmless; one
    that never ran is made good by the next. A model whose checkpoints are rows has no
    folder, and nothing to hand over (the thread's wake-up took the interpreter from
    the answer that a fit's end wakes).
    """
    if files.model_dir(model_id).is_dir():
        _PRUNER.submit(_prune, files, model_id, version)


def _prune(files: NodeFiles, model_id: str, version: int) -> None:
    folder = files.model_dir(model_id)
    cutoff = time.time() - _STAGED_GRACE_S
    try:
        for path in folder.glob(f"{_STAGED}*"):
            with contextlib.suppress(FileNotFoundError):  # committed or discarded meanwhile
                if path.stat().st_mtime < cutoff:
                    path.unlink()
        for path in folder.glob("*-*.*"):
            stem = path.name.split(".", 1)[0]
            prefix, _, number = stem.rpartition("-")
            stale = number.isdigit() and int(number) < version - 1
            if prefix in ("weights", "optimizer", "cart") and stale:
                path.unlink(missing_ok=True)
    except OSError:  # the folder went (the model or the node's data was deleted)
        return
