"""Per-user quotas: no data scientist can fill the node's disk, database or queue.

Each quota refuses at its limit with `QuotaExceeded` (the limit, the user's own count,
what to do) and keeps nothing of the refused request; deleting or finishing things
frees it; it binds one user only; the admin changes it; and two requests racing for
the last slot never both get it, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.flows.data import upload_images
from veil import nn
from veil.server.db.tables.models import ModelStateRow, PrivateObjectRow
from veil.server.services import quotas


def _model(ds: veil.Client | None = None) -> nn.Model:
    model = nn.Model(to=ds)
    model.add(nn.Flatten(input_shape=(None, 1, 8, 8)))
    model.add(nn.Dense(1, activation="sigmoid"))
    return model


@pytest.fixture
def setup(node):
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=64, side=8)
    return node, admin, make_ds(admin, node)


def _data(ds: veil.Client) -> tuple[veil.AssetPointer, veil.AssetPointer]:
    data = ds.datasets["Patches"]
    return data["train_images"], data["train_labels"]


def _checkpoints(node) -> int:
    """Models with a stored checkpoint: rows (the small ones) or files."""
    models = Path(node.settings.data_dir) / "models"
    with node.ctx.db.session() as session:
        rows = session.scalar(select(func.count(ModelStateRow.model_id.distinct())))
    return rows + (len(list(models.iterdir())) if models.exists() else 0)


def _usage(node, ds: veil.Client) -> tuple[int, int]:
    """The user's running totals, and what its stored objects really hold."""
    with node.ctx.db.session() as session:
        usage = quotas.lock_usage(session, ds.user.id)
        real = session.execute(
            select(func.count(), func.coalesce(func.sum(func.length(PrivateObjectRow.data)), 0))
            .select_from(PrivateObjectRow)
            .where(PrivateObjectRow.owner_id == ds.user.id)
        ).one()
        assert (usage.objects, usage.object_bytes) == tuple(real)
        return usage.objects, usage.object_bytes


def test_models_and_drafts_are_limited_per_user_and_freed_by_deleting(setup) -> None:
    node, admin, ds = setup
    assert admin.update_node(max_models=2, max_drafts=1)["max_models"] == 2
    kept = [_model().compile(to=ds), _model().compile(to=ds)]
    with pytest.raises(veil.QuotaExceeded, match=r"2 models.*max_models=2.*delete\(\)") as no:
        _model().compile(to=ds)
    assert no.value.detail == {"quota": "max_models", "limit": 2, "current": 2, "requested": 1}
    assert len(ds.models.list()) == 2 and _checkpoints(node) == 2  # nothing of it kept
    models = ds.usage["max_models"]  # what the user can see it holds before asking
    assert (models.used, models.limit, models.left) == (2, 2, 0)

    other = make_ds(admin, node)
    _model().compile(to=other)  # another user's models are not counted

    kept[0].delete()
    with pytest.raises(veil.NotFound):
        kept[0].refresh()
    assert _checkpoints(node) == 2  # its checkpoint went with it (the other user's stays)
    draft_model = _model(ds)  # flow I: a draft, within max_drafts
    with pytest.raises(veil.QuotaExceeded, match=r"1 uncompiled drafts.*discard_drafts"):
        _model(ds)
    compiled = draft_model.compile(loss=nn.BinaryCrossEntropy())  # the last model slot
    _model(ds)  # a compiled draft is its model's: the draft slot is free again
    with pytest.raises(veil.QuotaExceeded, match="max_models"):
        _model().compile(to=ds)
    assert ds.models.discard_drafts() == 1

    admin.update_node(max_models=3)  # the admin raises it
    _model().compile(to=ds)
    compiled.delete()
    assert len(ds.models.list()) == 2
    with pytest.raises(veil.PermissionDenied):
        ds.update_node(max_models=1000)


def test_queued_and_running_jobs_are_limited_per_user(sqlite_node, monkeypatch) -> None:
    node = sqlite_node
    monkeypatch.setattr(node.ctx.runner.worker, "drain", lambda: None)  # jobs stay queued
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=64, side=8)
    ds = make_ds(admin, node)
    x, y = _data(ds)
    admin.update_node(max_active_jobs=2)
    first, second, third = (_model().compile(to=ds) for _ in range(3))
    for model_ptr in (first, second):
        model_ptr.fit(x, y, max_iter=1, batch_size=16, wait=False)
    with pytest.raises(veil.QuotaExceeded, match=r"2 jobs queued or running.*cancel\(\)") as no:
        third.fit(x, y, max_iter=1, batch_size=16, wait=False)
    assert no.value.detail["quota"] == "max_active_jobs"
    assert third.progress()["status"] == "idle"  # nothing queued
    assert (ds.usage["max_active_jobs"].used, ds.usage["max_active_jobs"].left) == (2, 0)

    other = make_ds(admin, node)
    _model().compile(to=other).fit(*_data(other), max_iter=1, batch_size=16, wait=False)

    with pytest.raises(veil.Conflict, match="cancel it"):
        first.delete()  # a model in training is not deleted under its job
    first.cancel()  # a queued job ends at once, and frees its slot
    third.fit(x, y, max_iter=1, batch_size=16, wait=False)
    assert third.progress()["status"] == "queued"


def test_private_objects_are_limited_by_count_and_bytes(setup) -> None:
    node, admin, ds = setup
    x, y = _data(ds)
    admin.update_node(max_objects=4)
    model_ptr = _model().compile(to=ds)
    loss, preds = model_ptr.step(x[0:8], y[0:8])
    model_ptr.step(x[8:16], y[8:16])
    with pytest.raises(veil.QuotaExceeded, match=r"4 private objects.*delete_objects") as no:
        model_ptr.step(x[16:24], y[16:24])
    assert no.value.detail == {"quota": "max_objects", "limit": 4, "current": 4, "requested": 2}
    assert model_ptr.refresh()._info["steps"] == 2  # the step was not kept
    assert _usage(node, ds)[0] == 4

    loss.delete()
    preds.delete()
    with pytest.raises(veil.NotFound):
        loss.publish(epsilon=1.0)
    model_ptr.step(x[16:24], y[16:24])  # room again; the model goes on from its last step
    assert model_ptr.refresh()._info["steps"] == 3

    other = make_ds(admin, node)
    ox, oy = _data(other)
    other_loss, _ = _model().compile(to=other).step(ox[0:8], oy[0:8])
    with pytest.raises(veil.NotFound):
        ds._http.delete(f"/objects/{other_loss.id}")  # not anyone else's

    held = ds.usage
    assert (held["max_objects"].used, held["max_object_bytes"].used) == _usage(node, ds)
    assert model_ptr.delete_objects() == 4
    objects, nbytes = _usage(node, ds)
    assert (objects, nbytes) == (0, 0)
    model_ptr.step(x[0:8], y[0:8])
    one_step = _usage(node, ds)[1]
    admin.update_node(max_objects=100, max_object_bytes=one_step + one_step // 2)
    with pytest.raises(veil.QuotaExceeded, match="max_object_bytes") as no:
        model_ptr.step(x[8:16], y[8:16])
    assert no.value.detail["current"] == one_step and no.value.detail["requested"] == one_step
    model_ptr.delete()  # a model's objects go with it
    assert _usage(node, ds) == (0, 0)


def test_two_requests_never_both_take_the_last_model_slot(setup, monkeypatch) -> None:
    """The first to count holds the user's usage row until it commits: the other waits
    and then counts the first's model. Without that lock both would count one model,
    meet at the barrier and both create a second."""
    node, admin, ds = setup
    admin.update_node(max_models=2)
    _model().compile(to=ds)
    barrier = threading.Barrier(2, timeout=0.5)
    read_limits = quotas.get_node

    def after_counting(session):  # noqa: ANN001, ANN202
        # Broken when the other request waits for this one's lock, as it should.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return read_limits(session)

    monkeypatch.setattr(quotas, "get_node", after_counting)

    def compile_one() -> str:
        try:
            _model().compile(to=ds)
        except veil.QuotaExceeded:
            return "refused"
        return "created"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(lambda _: compile_one(), range(2)))
    assert outcomes == ["created", "refused"]
    assert len(ds.models.list()) == 2


def test_two_steps_never_both_take_the_last_object_slots(setup) -> None:
    node, admin, ds = setup
    x, y = _data(ds)
    admin.update_node(max_objects=4)
    first, second = _model().compile(to=ds), _model().compile(to=ds)
    first.step(x[0:8], y[0:8])

    def step(model_ptr: veil.ModelPointer) -> str:
        try:
            model_ptr.step(x[8:16], y[8:16])
        except veil.QuotaExceeded:
            return "refused"
        return "kept"

    with ThreadPoolExecutor(2) as pool:  # two models: their steps compute side by side
        outcomes = sorted(pool.map(step, [first, second]))
    assert outcomes == ["kept", "refused"]
    assert _usage(node, ds)[0] == 4


def test_each_user_sees_only_what_it_holds_against_each_limit(setup) -> None:
    node, admin, ds = setup
    x, y = _data(ds)
    admin.update_node(max_models=5, max_drafts=3, max_objects=50)
    fresh = ds.usage
    assert list(fresh) == [
        "max_models",
        "max_drafts",
        "max_active_jobs",
        "max_objects",
        "max_object_bytes",
    ]
    assert [(u.used, u.limit) for u in fresh.values()][:2] == [(0, 5), (0, 3)]
    assert "uncompiled drafts" in repr(fresh) and "<table>" in fresh._repr_html_()

    model_ptr = _model().compile(to=ds)
    model_ptr.step(x[0:8], y[0:8])
    _model(ds)  # a draft
    other = make_ds(admin, node)
    _model().compile(to=other)  # never counted as ds's

    held = ds.usage
    assert {q: u.used for q, u in held.items() if q != "max_object_bytes"} == {
        "max_models": 1,
        "max_drafts": 1,
        "max_active_jobs": 0,
        "max_objects": 2,
    }
    assert held["max_object_bytes"].used == _usage(node, ds)[1] > 0
    assert held["max_objects"].left == 48
    assert other.usage["max_models"].used == 1 and other.usage["max_objects"].used == 0
    with httpx.Client(base_url=node.url) as anonymous:  # no token: nobody's usage
        assert anonymous.get("/api/v1/users/me/usage").status_code == 401
