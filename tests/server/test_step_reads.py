"""A step keeps what never changes in memory (its model, the facts of its pointers, the
memory maps of their arrays) and still asks the database what may: whether the
dataset is there, whose a view is, the model's version."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.server.rows import logistic, upload_rows
from veil.server.db.tables.models import ModelRow, ModelStateRow


def _stepping(node):  # noqa: ANN001, ANN202
    """(the admin, x and y of the uploaded "Rows", a data scientist's model on them)."""
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_rows(admin, 32)
    ds = make_ds(admin, node)
    data = ds.datasets["Rows"]
    return admin, data["x"], data["y"], logistic().compile(to=ds)


def test_a_deleted_dataset_is_gone_for_a_model_that_stepped_on_it(sqlite_node) -> None:
    admin, x, y, model_ptr = _stepping(sqlite_node)
    model_ptr.step(x[0:8], y[0:8])
    model_ptr.step(x[8:16], y[8:16])
    admin.datasets.delete("Rows")
    with pytest.raises(veil.NotFound, match="No asset or view"):
        model_ptr.step(x[16:24], y[16:24])
    assert model_ptr.refresh()._info["steps"] == 2


def test_another_users_view_stays_invisible_after_its_owner_stepped_on_it(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_rows(admin, 32)
    owner, other = make_ds(admin, sqlite_node), make_ds(admin, sqlite_node)
    data = owner.datasets["Rows"]
    x_view, y_view = data["x"][0:8], data["y"][0:8]
    views = {"x": x_view.id, "y": y_view.id}  # stored on the node, the owner's
    logistic().compile(to=owner).step(x_view, y_view)  # their facts are now in memory
    theirs = logistic().compile(to=other)
    with pytest.raises(veil.NotFound, match="No asset or view"):
        other._http.post(f"/models/{theirs.id}/step", json=views)
    assert theirs.refresh()._info["steps"] == 0


def test_a_step_asks_the_database_once_per_fact(sqlite_node) -> None:
    """A warm step reads in two short transactions (the caller's token; the model's
    version, then the dataset's units, which also show it is there, once for x, y and
    units) and writes in one (the model, its state in place of the one before last, its
    cart, the owner's object quota, the objects), and sets no PRAGMA on a connection
    already in a step's mode."""
    from sqlalchemy import event

    _, x, y, model_ptr = _stepping(sqlite_node)
    for start in range(0, 16, 4):  # warm: the model, its pointers and the connections
        model_ptr.step(x[start : start + 4], y[start : start + 4])
    seen: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        seen.append(" ".join(statement.split()[:3]))

    engine = sqlite_node.ctx.db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        model_ptr.step(x[16:20], y[16:20])
    finally:
        event.remove(engine, "before_cursor_execute", record)
    begins = [s for s in seen if s.startswith("BEGIN")]
    assert begins == ["BEGIN DEFERRED", "BEGIN DEFERRED", "BEGIN IMMEDIATE"], seen
    assert not [s for s in seen if s.startswith("PRAGMA")], seen
    assert sum(s.startswith("SELECT datasets.") for s in seen) == 1, seen
    assert sum(s.startswith("UPDATE model_states") for s in seen) == 1, seen
    assert not [s for s in seen if s.startswith(("INSERT INTO model_states", "DELETE"))], seen
    assert sum(s.startswith("INSERT INTO private_objects") for s in seen) == 1, seen
    assert sum(s.startswith("UPDATE user_usage") for s in seen) == 1, seen
    assert len(seen) <= 11, seen


def _states(node, model_id: str) -> list[int]:  # noqa: ANN001
    with node.ctx.db.session() as session:
        query = select(ModelStateRow.version).where(ModelStateRow.model_id == model_id)
        return sorted(session.scalars(query))


def test_a_model_stores_the_state_of_its_version_and_the_one_before_only(node) -> None:
    """A step reuses the state before last for the new one; whatever made the versions
    before it (compiling, a fit, a release that charged rows), only v and v-1 stay, and
    a node that reloads the model from them has the weights the steps made."""
    _, x, y, model_ptr = _stepping(node)
    for start in range(0, 12, 4):
        model_ptr.step(x[start : start + 4], y[start : start + 4])
        version = model_ptr.refresh()._info["version"]
        assert _states(node, model_ptr.id) == [version - 1, version]
    model_ptr.fit(x, y, max_iter=1, batch_size=16)
    model_ptr.step(x[0:4], y[0:4])
    model_ptr.evaluate(x[0:8], y[0:8], epsilon=0.5)  # charges rows: a version of its own
    for start in (8, 12):
        model_ptr.step(x[start : start + 4], y[start : start + 4])
        version = model_ptr.refresh()._info["version"]
        assert _states(node, model_ptr.id) == [version - 1, version]
    live = node.ctx.live.cached(model_ptr.id, version)
    assert live is not None
    node.ctx.live.forget(model_ptr.id)
    with node.ctx.db.session() as session:
        reloaded = node.ctx.live.get(session, session.get(ModelRow, model_ptr.id))
    assert reloaded.version == version
    for name, weights in live.trainer.get_weights().items():
        np.testing.assert_array_equal(reloaded.trainer.get_weights()[name], weights)
