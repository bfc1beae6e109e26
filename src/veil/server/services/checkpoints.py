"""Save and load a model's checkpoint: weights, optimizer state and cart, as one version.

Files are written first, with no transaction open, under temporary names
(`stage_checkpoint`); then, in the caller's short transaction with the model row locked,
they are renamed to version v+1 and the row is pointed at v+1 with its cart curve
(`StagedCheckpoint.commit`): a crash in between leaves the row at v with v's files, so
weights and cart always match, and no lock is held while tensors are written. Files two
versions old are removed after the commit; the previous version stays for a publish
that read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
from veil.server.storage.files import NodeFiles, atomic_write, link_into, sync_files

__all__ = [
    "load_cart",
    "load_trainer",
    "prune_old_versions",
    "StagedCheckpoint",
    "save_cart_arrays",
    "save_cart_version",
    "stage_checkpoint",
]

_STAGED = ".staged-"
_STAGED_GRACE_S = 3600.0  # a staged file this old belongs to a process that died
_PRUNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="veil-prune")


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


def save_cart_arrays(path: Path, cart: Cart, *, sync: bool = True) -> None:
    """The cart's per-row arrays as one .npz (`rho_i`, `pool_i` per source, sorted keys)."""
    arrays = cart.arrays()
    flat: dict[str, np.ndarray] = {}
    for index, key in enumerate(sorted(arrays)):
        flat[f"rho_{index}"] = arrays[key]["rho"]
        flat[f"pool_{index}"] = arrays[key]["pool"]

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **flat)

    atomic_write(path, write, sync=sync)


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


@dataclass(frozen=True)
class StagedCheckpoint:
    """A checkpoint written under temporary names, waiting to become a model's version."""

    weights: Path
    optimizer: Path
    cart_arrays: Path
    cart: Cart

    def commit(self, files: NodeFiles, model: ModelRow, *, steps_added: int = 0) -> None:
        """Rename the files to version v+1 and point the row at it; the caller holds the
        row locked and commits. Renames are O(1), whatever the model's size."""
        version = model.version + 1
        os.replace(self.weights, files.weights(model.id, version))
        os.replace(self.optimizer, files.optimizer(model.id, version))
        os.replace(self.cart_arrays, files.cart_arrays(model.id, version))
        _point_at(model, version, self.cart, steps_added)

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return (self.weights, self.optimizer, self.cart_arrays)

    def discard(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)


def stage_checkpoint(
    files: NodeFiles, model_id: str, *, trainer: DPTrainer, cart: Cart, sync: bool = True
) -> StagedCheckpoint:
    """Write the trainer's weights and optimizer state and the cart; call outside any
    transaction, then `commit` (or `discard`). The files are synced together before it
    returns; with `sync=False` the caller syncs `paths` (with its other files) before
    the commit."""
    folder = files.model_dir(model_id)
    stem = f"{_STAGED}{uuid.uuid4().hex}"
    staged = StagedCheckpoint(
        weights=folder / f"{stem}.weights.safetensors",
        optimizer=folder / f"{stem}.optimizer.safetensors",
        cart_arrays=folder / f"{stem}.cart.npz",
        cart=cart.copy(),
    )
    try:
        tensors, meta = trainer.checkpoint()
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


def save_cart_version(files: NodeFiles, model: ModelRow, *, cart: Cart) -> None:
    """Version v+1 with v's weights and optimizer state (linked: they did not change)
    and a new cart, for a release that charged rows; the caller commits."""
    version = model.version + 1
    for path_of in (files.weights, files.optimizer):
        link_into(path_of(model.id, model.version), path_of(model.id, version))
    save_cart_arrays(files.cart_arrays(model.id, version), cart)
    _point_at(model, version, cart, 0)


def prune_old_versions(files: NodeFiles, model: ModelRow) -> None:
    """Remove checkpoints older than the previous version, and staged files a process
    that died left behind (call after commit).

    Runs on a background thread: unlinking on a journaled file system costs as much as
    a step, and nothing waits for it. Only versions below the previous one go, never a
    newer one that committed meanwhile, so a late or repeated prune is harmless; one
    that never ran is made good by the next.
    """
    _PRUNER.submit(_prune, files, model.id, model.version)


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
