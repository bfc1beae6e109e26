"""Models, private objects and ledger reads for the ledger tests, written straight into
a node's database and files (no training: the cart is built with `veil.privacy.Cart`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load_file, save_file
from sqlalchemy import func, select

from tests.nodes import RunningNode
from veil.nn import Dense, ModelSpec
from veil.privacy import Bound, Cart, RdpCurve
from veil.server.db.engine import Database
from veil.server.db.tables.ledger import LedgerRow, ReleaseRow
from veil.server.db.tables.models import ModelRow
from veil.server.services.checkpoints import save_cart_arrays
from veil.server.services.private_objects import pending_object, record_objects
from veil.server.storage.files import NodeFiles, atomic_write

__all__ = [
    "Ledger",
    "NodeStore",
    "Q",
    "SIGMA",
    "SOURCE",
    "SOURCE_ROWS",
    "add_model",
    "add_object",
    "ledger_of",
    "random_weights",
    "sampled_cart",
    "store_of",
    "train_more",
    "weights_on_disk",
]

# A real spec (the node reads its output range); its weights are never loaded here.
SPEC = ModelSpec.build((None, 3), [Dense(4, activation="softmax", input_shape=(None, 3))]).to_dict()
SOURCE = "dataset-1"
SOURCE_ROWS = 1_000
Q = 0.01
SIGMA = 1.0


@dataclass(frozen=True)
class NodeStore:
    """The database and file layout of a node, in-process or in another process."""

    db: Database
    files: NodeFiles


def store_of(node: RunningNode) -> NodeStore:
    """The store of a node running in this process."""
    return NodeStore(db=node.ctx.db, files=NodeFiles(node.settings.data_dir))


def sampled_cart(
    steps: int, *, n_rows: int = SOURCE_ROWS, q: float = Q, sigma: float = SIGMA
) -> Cart:
    """A cart after `steps` Poisson-sampled DP-SGD steps on one data source."""
    cart = Cart()
    cart.ensure_source(SOURCE, n_rows)
    cart.mark_pool(SOURCE, np.arange(n_rows))
    cart.add_sampled(SOURCE, q=q, sigma=sigma, steps=steps)
    return cart


def random_weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "dense.bias": rng.normal(size=(4,)).astype(np.float32),
    }


def _write_weights(
    files: NodeFiles, model_id: str, version: int, weights: dict[str, np.ndarray]
) -> None:
    atomic_write(files.weights(model_id, version), lambda tmp: save_file(weights, str(tmp)))
    # No trainer here: the optimizer file only has to exist for versions to link it.
    files.optimizer(model_id, version).write_bytes(b"")


def add_model(
    store: NodeStore, *, owner_id: str, cart: Cart, weights: dict[str, np.ndarray], steps: int = 0
) -> str:
    """Insert a model at version 0 with this cart, nothing charged, and its weights file."""
    with store.db.session() as session:
        model = ModelRow(
            owner_id=owner_id,
            spec=SPEC,
            version=0,
            cart_state=dict(cart.state_dict()),
            cart_curve=cart.curve().to_list(),
            charged_curve=RdpCurve.zero().to_list(),
            steps=steps,
        )
        session.add(model)
        session.flush()
        _write_weights(store.files, model.id, 0, weights)
        save_cart_arrays(store.files.cart_arrays(model.id, 0), cart)
        session.commit()
        return model.id


def train_more(
    store: NodeStore, *, model_id: str, cart: Cart, weights: dict[str, np.ndarray]
) -> int:
    """A new checkpoint: new weights file, the grown cart, the next version."""
    with store.db.session() as session:
        model = session.get(ModelRow, model_id)
        version = model.version + 1
        _write_weights(store.files, model_id, version, weights)
        save_cart_arrays(store.files.cart_arrays(model_id, version), cart)
        model.version = version
        model.cart_state = dict(cart.state_dict())
        model.cart_curve = cart.curve().to_list()
        session.commit()
        return version


def weights_on_disk(store: NodeStore, model_id: str, version: int) -> dict[str, np.ndarray]:
    return load_file(str(store.files.weights(model_id, version)))


def add_object(
    store: NodeStore,
    *,
    owner_id: str,
    model_id: str,
    values: np.ndarray | list[float],
    rows: np.ndarray | range,
    bound: Bound | None,
    kind: str = "loss",
) -> str:
    """Insert a private object of per-row `values` over `rows` of SOURCE, as a step does."""
    array = np.asarray(values, dtype=np.float64)
    shape = () if kind == "loss" else array.shape
    pending = pending_object(
        kind=kind,
        source=SOURCE,
        rows=np.asarray(rows, dtype=np.int64),
        values=array,
        shape=shape,
        bound=bound,
    )
    with store.db.session() as session:
        [row] = record_objects(session, [pending], owner_id=owner_id, model_id=model_id)
        session.commit()
        return row.id


@dataclass(frozen=True)
class Ledger:
    """What the database says a user was charged and released."""

    curve: RdpCurve
    epsilon: float
    releases: int
    release_curves: RdpCurve


def ledger_of(store: NodeStore, user_id: str) -> Ledger:
    with store.db.session() as session:
        row = session.get(LedgerRow, user_id)
        curves = session.scalars(
            select(ReleaseRow.curve_added).where(ReleaseRow.user_id == user_id)
        )
        total = RdpCurve.zero()
        for curve in curves:
            total = total + RdpCurve.from_list(curve)
        count = session.scalar(
            select(func.count()).select_from(ReleaseRow).where(ReleaseRow.user_id == user_id)
        )
    curve = RdpCurve.zero() if row is None else RdpCurve.from_list(row.curve)
    return Ledger(
        curve=curve,
        epsilon=0.0 if row is None else row.epsilon,
        releases=count,
        release_curves=total,
    )
