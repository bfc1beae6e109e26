"""Models kept in memory across compile, steps and fits (`services.live_models`).

A new model and a fit's result stay in the node's memory, so the first step or fit
after them does not rebuild the model from its checkpoint. What is kept must be the
stored version exactly (weights, optimizer state, cart), and a fit may never start from
a model that a step in flight has moved ahead of the store: that step is refused (the
model is the fit's), so its update must not be trained on.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.flows.data import image_mlp, upload_images
from veil.engine import DPTrainer
from veil.server.db.tables.models import ModelRow
from veil.server.jobs import fit as fit_job
from veil.server.services import live_models
from veil.server.services.checkpoints import load_cart, load_trainer

BUDGET = 1e6


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The ids of the models rebuilt from their checkpoints, by the steps' cache or a fit."""
    seen: list[str] = []

    def counted(session, files, model, **kwargs):  # noqa: ANN001, ANN202
        seen.append(model.id)
        return load_trainer(session, files, model, **kwargs)

    monkeypatch.setattr(live_models, "load_trainer", counted)
    monkeypatch.setattr(fit_job, "load_trainer", counted)
    return seen


def _session(sqlite_node) -> tuple[veil.ModelPointer, object, object]:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=96)
    ds = make_ds(admin, sqlite_node, budget=BUDGET)
    data = ds.datasets["Patches"]
    return image_mlp().compile(to=ds), data["train_images"], data["train_labels"]


def _kept_is_stored(sqlite_node, model_id: str) -> None:
    """The model in memory is the stored version: weights, optimizer state and cart."""
    ctx = sqlite_node.ctx
    with ctx.db.session() as session:
        model = session.get(ModelRow, model_id)
        kept = ctx.live.cached(model_id, model.version)
        assert kept is not None, "the model is not kept in memory at its stored version"
        stored = load_trainer(session, ctx.files, model)
        stored_cart = load_cart(session, ctx.files, model)
    (ours, our_meta), (theirs, their_meta) = kept.trainer.checkpoint(), stored.checkpoint()
    assert our_meta == their_meta and ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        if name != "rng.dropout":  # each trainer draws its own masks
            assert torch.equal(ours[name], tensor), name
    assert kept.cart.state_dict() == stored_cart.state_dict()
    for key, arrays in stored_cart.arrays().items():
        for name, stored_array in arrays.items():
            np.testing.assert_array_equal(kept.cart.arrays()[key][name], stored_array)


def test_compile_step_and_fit_keep_the_model_without_reloading_it(sqlite_node, loads) -> None:
    model_ptr, x, y = _session(sqlite_node)
    _kept_is_stored(sqlite_node, model_ptr.id)
    model_ptr.step(x[0:16], y[0:16])
    model_ptr.fit(x, y, max_iter=2, batch_size=16, validation_split=0.25, wait=True)
    _kept_is_stored(sqlite_node, model_ptr.id)
    model_ptr.step(x[16:32], y[16:32])
    model_ptr.fit(x, y, max_iter=1, batch_size=16, wait=True)
    _kept_is_stored(sqlite_node, model_ptr.id)
    assert loads == []
    assert model_ptr.refresh()._info["steps"] == model_ptr.progress()["total_steps"]


def test_a_fit_reloads_a_model_that_another_process_moved_on(sqlite_node, loads) -> None:
    model_ptr, x, y = _session(sqlite_node)
    model_ptr.step(x[0:16], y[0:16])
    sqlite_node.ctx.live.take(model_ptr.id, -1)  # forgotten, as by another process's fit
    model_ptr.fit(x, y, max_iter=1, batch_size=16, wait=True)
    assert loads == [model_ptr.id]
    _kept_is_stored(sqlite_node, model_ptr.id)


def test_a_fit_never_trains_on_from_a_step_it_refused(sqlite_node, loads, monkeypatch) -> None:
    model_ptr, x, y = _session(sqlite_node)
    model_ptr.step(x[0:16], y[0:16])
    before = model_ptr.refresh()._info
    reached, go = threading.Event(), threading.Event()
    real_step = DPTrainer.step

    def held(self, *args, **kwargs):  # noqa: ANN001, ANN202
        out = real_step(self, *args, **kwargs)  # the kept weights move ahead of the store
        reached.set()
        assert go.wait(30)
        return out

    monkeypatch.setattr(DPTrainer, "step", held)
    answers: list[object] = []

    def step() -> None:
        try:
            answers.append(model_ptr.step(x[16:32], y[16:32]))
        except veil.VeilError as exc:
            answers.append(exc)

    stepping = threading.Thread(target=step)
    stepping.start()
    assert reached.wait(15)
    dirty = sqlite_node.ctx.live.cached(model_ptr.id, before["version"])
    model_ptr.fit(x, y, max_iter=1, batch_size=16, wait=False)  # the model is the fit's now
    while model_ptr.progress()["status"] == "queued":
        time.sleep(0.01)
    time.sleep(0.3)  # the job is loading the model: it must wait for the step to end
    go.set()
    stepping.join(30)
    assert isinstance(answers[0], veil.Conflict), answers
    final = model_ptr.wait(show=False)
    assert final["status"] == "done"
    assert model_ptr.refresh()._info["steps"] == before["steps"] + final["steps"]
    assert loads == [model_ptr.id]  # the fit rebuilt the model from the store
    kept = sqlite_node.ctx.live.cached(model_ptr.id, model_ptr.refresh()._info["version"])
    assert kept is not None and dirty is not None and kept.trainer is not dirty.trainer
    _kept_is_stored(sqlite_node, model_ptr.id)


def _held_steps(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """(reached, go): every trainer step, once computed, waits for `go`."""
    reached, go = threading.Event(), threading.Event()
    real_step = DPTrainer.step

    def held(self, *args, **kwargs):  # noqa: ANN001, ANN202
        out = real_step(self, *args, **kwargs)
        reached.set()
        assert go.wait(30)
        return out

    monkeypatch.setattr(DPTrainer, "step", held)
    return reached, go


def test_a_request_for_another_users_model_waits_on_none_of_its_locks(
    sqlite_node, monkeypatch
) -> None:
    model_ptr, x, y = _session(sqlite_node)
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    other = make_ds(admin, sqlite_node, budget=BUDGET)
    theirs = other.datasets["Patches"]
    reached, go = _held_steps(monkeypatch)
    owner = threading.Thread(target=model_ptr.step, args=(x[0:16], y[0:16]))
    owner.start()
    try:
        assert reached.wait(15)  # the owner's step holds its model's lock
        answers: list[object] = []

        def trespass() -> None:
            for call in (
                lambda: other.models.get(model_ptr.id),
                lambda: other._http.post(
                    f"/models/{model_ptr.id}/step",
                    json={"x": theirs["train_images"].id, "y": theirs["train_labels"].id},
                ),
                lambda: other._http.delete(f"/models/{model_ptr.id}"),
            ):
                try:
                    call()
                except veil.VeilError as exc:
                    answers.append(exc)

        trespassing = threading.Thread(target=trespass)
        trespassing.start()
        trespassing.join(10)  # answered while the owner's step still holds the lock
        assert not trespassing.is_alive(), "a request for another's model waited on its lock"
        assert [type(a) for a in answers] == [veil.NotFound] * 3, answers
    finally:
        go.set()
        owner.join(30)
    assert list(sqlite_node.ctx.live._locks.keys()) == []  # nothing left once requests end
