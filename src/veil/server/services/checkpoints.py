"""Save and load a model's checkpoint: weights, optimizer state and cart, as one version.

Files are written first under version v+1, then the model row is pointed at v+1 (and
its cart curve updated) in the caller's transaction: a crash in between leaves the row
at v with v's files, so weights and cart always match. Files two versions old are
removed after the commit; the previous version stays for a publish that read it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, safe_open
from safetensors.torch import save_file as save_torch

from veil.engine import DPTrainer
from veil.nn.spec import ModelSpec
from veil.privacy import Cart
from veil.server.db.base import utcnow
from veil.server.db.tables.models import ModelRow
from veil.server.storage.files import NodeFiles, atomic_write, link_into

__all__ = [
    "load_cart",
    "load_trainer",
    "prune_old_versions",
    "save_cart_arrays",
    "save_cart_version",
    "save_checkpoint",
]


def load_cart(files: NodeFiles, model: ModelRow) -> Cart:
    cart = Cart()
    path = files.cart_arrays(model.id, model.version)
    arrays: dict[str, dict[str, np.ndarray]] = {}
    if model.cart_state["sources"]:
        with np.load(path, allow_pickle=False) as stored:
            for index, key in enumerate(sorted(model.cart_state["sources"])):
                arrays[key] = {"rho": stored[f"rho_{index}"], "pool": stored[f"pool_{index}"]}
    cart.load_state_dict(model.cart_state, arrays)
    return cart


def save_cart_arrays(path: Path, cart: Cart) -> None:
    """The cart's per-row arrays as one .npz (`rho_i`, `pool_i` per source, sorted keys)."""
    arrays = cart.arrays()
    flat: dict[str, np.ndarray] = {}
    for index, key in enumerate(sorted(arrays)):
        flat[f"rho_{index}"] = arrays[key]["rho"]
        flat[f"pool_{index}"] = arrays[key]["pool"]

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **flat)

    atomic_write(path, write)


def load_trainer(files: NodeFiles, model: ModelRow, *, device: str = "cpu") -> DPTrainer:
    """The model at its current version. Never seeded: its noise and sampling are secure."""
    trainer = DPTrainer(ModelSpec.from_dict(model.spec), device=device)
    path = files.optimizer(model.id, model.version)
    tensors = load_file(path)
    with safe_open(path, framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get("veil", "{}"))
    trainer.load_checkpoint(tensors, meta)
    return trainer


def _point_at(model: ModelRow, version: int, cart: Cart, steps_added: int) -> None:
    model.version = version
    model.cart_state = dict(cart.state_dict())
    model.cart_curve = cart.curve().to_list()
    model.steps = model.steps + steps_added
    model.updated_at = utcnow()


def save_checkpoint(
    files: NodeFiles,
    model: ModelRow,
    *,
    trainer: DPTrainer,
    cart: Cart,
    steps_added: int = 0,
) -> None:
    """Write version v+1 and point the row at it; the caller commits."""
    version = model.version + 1
    tensors, meta = trainer.checkpoint()
    weights = trainer.get_weights()
    atomic_write(files.weights(model.id, version), lambda tmp: save_numpy(weights, str(tmp)))
    contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    atomic_write(
        files.optimizer(model.id, version),
        lambda tmp: save_torch(contiguous, str(tmp), metadata={"veil": json.dumps(meta)}),
    )
    save_cart_arrays(files.cart_arrays(model.id, version), cart)
    _point_at(model, version, cart, steps_added)


def save_cart_version(files: NodeFiles, model: ModelRow, *, cart: Cart) -> None:
    """Version v+1 with v's weights and optimizer state (linked: they did not change)
    and a new cart, for a release that charged rows; the caller commits."""
    version = model.version + 1
    for path_of in (files.weights, files.optimizer):
        link_into(path_of(model.id, model.version), path_of(model.id, version))
    save_cart_arrays(files.cart_arrays(model.id, version), cart)
    _point_at(model, version, cart, 0)


def prune_old_versions(files: NodeFiles, model: ModelRow) -> None:
    """Remove checkpoints older than the previous version (call after commit)."""
    keep = {model.version, model.version - 1}
    for path in files.model_dir(model.id).glob("*-*.*"):
        stem = path.name.split(".", 1)[0]
        prefix, _, number = stem.rpartition("-")
        stale = number.isdigit() and int(number) not in keep
        if prefix in ("weights", "optimizer", "cart") and stale:
            path.unlink(missing_ok=True)
