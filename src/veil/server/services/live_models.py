"""Models kept in memory between `step` calls, one lock per model.

Flow III sends one request per batch; rebuilding the model from its checkpoint each
time would cost more than the step. The cache is keyed by model id and checked against
the row's version, so a fit that ran elsewhere (another thread, a Celery worker) is
picked up by reloading the checkpoint. A fit job in this process takes the model out
while it trains and puts it back at its last checkpoint's version.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.orm import Session

from veil.engine import DPTrainer
from veil.privacy import Cart
from veil.server.db.tables.models import ModelRow
from veil.server.services.cart_changes import CartChain
from veil.server.services.checkpoints import load_cart_chain, load_trainer
from veil.server.storage.files import NodeFiles

__all__ = ["LiveModel", "LiveModels"]


@dataclass
class LiveModel:
    version: int
    trainer: DPTrainer
    cart: Cart
    chain: CartChain | None = None  # where a step keeps this version's cart, if one made it


class _ModelLock:
    """One model's lock, kept (weakly) while someone holds it or waits for it."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> _ModelLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class LiveModels:
    def __init__(self, files: NodeFiles, *, device: str, capacity: int = 16) -> None:
        self._files = files
        self.device = device
        self._capacity = capacity
        self._cache: OrderedDict[str, LiveModel] = OrderedDict()
        self._locks: weakref.WeakValueDictionary[tuple[str, str], _ModelLock] = (
            weakref.WeakValueDictionary()
        )
        self._guard = threading.Lock()

    def lock(self, owner_id: str, model_id: str) -> _ModelLock:
        """The lock of `owner_id`'s model `model_id`. Keyed by the caller too: a request
        naming another user's model waits on no lock of it before its NotFound (when
        that model computes would be a timing channel), and ids that name nothing leave
        nothing behind once their requests end."""
        key = (owner_id, model_id)
        with self._guard:
            found = self._locks.get(key)
            if found is None:
                found = self._locks[key] = _ModelLock()
            return found

    def cached(self, model_id: str, version: int) -> LiveModel | None:
        """The model kept in memory, if it is at `version`; call with its lock held."""
        with self._guard:
            live = self._cache.get(model_id)
            if live is None or live.version != version:
                return None
            self._cache.move_to_end(model_id)
            return live

    def take(self, model_id: str, version: int) -> LiveModel | None:
        """Remove the model kept in memory and hand it over, if it is at `version` (a
        fit job trains it out of everyone else's reach); call with its lock held."""
        with self._guard:
            live = self._cache.pop(model_id, None)
        return live if live is not None and live.version == version else None

    def get(self, session: Session, model: ModelRow) -> LiveModel:
        """The model at the row's version (read in `session` when not kept); call with
        its owner's `lock` held."""
        live = self.cached(model.id, model.version)
        if live is not None:
            return live
        cart, chain = load_cart_chain(session, self._files, model)
        live = LiveModel(
            version=model.version,
            trainer=load_trainer(session, self._files, model, device=self.device),
            cart=cart,
            chain=chain,
        )
        self.put(model.id, live)
        return live

    @contextmanager
    def evicted_on_error(self, model_id: str) -> Iterator[None]:
        """Drop the cached model if the block fails: its weights may be ahead of the store."""
        try:
            yield
        except BaseException:
            with self._guard:
                self._cache.pop(model_id, None)
            raise

    def forget(self, model_id: str) -> None:
        """Drop the model kept in memory, if any (it was deleted)."""
        with self._guard:
            self._cache.pop(model_id, None)

    def put(self, model_id: str, live: LiveModel) -> None:
        with self._guard:
            self._cache[model_id] = live
            self._cache.move_to_end(model_id)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
