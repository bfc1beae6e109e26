"""A step stores its cart as the rows it changed: the write does not grow with the
dataset, and every version's cart reads back exactly as the step left it in memory."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.server.rows import logistic, upload_rows
from veil.privacy import Cart
from veil.server.db.tables.models import CartChangeRow, ModelRow
from veil.server.services.cart_changes import FULL_AFTER, CartChain, cart_change
from veil.server.services.checkpoints import load_cart_chain


def _stored(node, model_id: str) -> tuple[Cart, CartChain | None]:  # noqa: ANN001
    ctx = node.ctx
    with ctx.db.session() as session:
        return load_cart_chain(session, ctx.files, session.get(ModelRow, model_id))


def _in_memory(node, model_id: str):  # noqa: ANN001, ANN202
    ctx = node.ctx
    with ctx.db.session() as session:
        version = session.get(ModelRow, model_id).version
    live = ctx.live.cached(model_id, version)
    assert live is not None
    return live


def _assert_same(stored: Cart, memory: Cart) -> None:
    assert stored.state_dict() == memory.state_dict()
    for key, arrays in memory.arrays().items():
        np.testing.assert_array_equal(stored.arrays()[key]["rho"], arrays["rho"])
        np.testing.assert_array_equal(stored.arrays()[key]["pool"], arrays["pool"])


def _changes(node, model_id: str) -> list[CartChangeRow]:  # noqa: ANN001
    with node.ctx.db.session() as session:
        query = select(CartChangeRow).where(CartChangeRow.model_id == model_id)
        return list(session.scalars(query.order_by(CartChangeRow.version)))


def test_every_step_version_reads_back_as_the_step_left_it(node) -> None:
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_rows(admin, 64, features=4)
    ds = make_ds(admin, node)
    x, y = ds.datasets["Rows"]["x"], ds.datasets["Rows"]["y"]
    model_ptr = logistic(4).compile(to=ds)
    # Overlapping batches, so a change overwrites rows an earlier one changed; 16 rows
    # (a quarter of 64) of changes make a full row, several times over.
    for start in (0, 8, 0, 4, 60, 30, 31, 0, 12, 40, 48, 56, 0, 2):
        model_ptr.step(x[start : start + 4], y[start : start + 4])
        live = _in_memory(node, model_ptr.id)
        stored, chain = _stored(node, model_ptr.id)
        _assert_same(stored, live.cart)
        assert chain == live.chain
        changes = _changes(node, model_ptr.id)
        assert changes[-1].version == live.version
        # The chains before the previous full row are gone: at most two are kept.
        assert sum(row.full for row in changes) <= 2
    assert any(not row.full for row in changes) and changes[0].full


def test_a_step_writes_the_rows_it_changed_not_the_whole_cart(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_rows(admin, 100_000, features=4)
    ds = make_ds(admin, sqlite_node)
    x, y = ds.datasets["Rows"]["x"], ds.datasets["Rows"]["y"]
    model_ptr = logistic(4).compile(to=ds)
    for start in (0, 500, 90_000):
        model_ptr.step(x[start : start + 8], y[start : start + 8])
    first, *changes = _changes(sqlite_node, model_ptr.id)
    assert first.full and len(first.data) > 100_000 * 9  # the first step: a whole copy
    assert [row.full for row in changes] == [False, False]
    assert all(len(row.data) < 1_000 for row in changes)  # 8 rows, whatever the dataset
    stored, _ = _stored(sqlite_node, model_ptr.id)
    _assert_same(stored, _in_memory(sqlite_node, model_ptr.id).cart)


def test_a_step_after_a_fit_starts_a_new_chain_and_forgets_the_old(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_rows(admin, 64, features=4)
    ds = make_ds(admin, sqlite_node)
    x, y = ds.datasets["Rows"]["x"], ds.datasets["Rows"]["y"]
    model_ptr = logistic(4).compile(to=ds)
    model_ptr.step(x[0:4], y[0:4])
    model_ptr.step(x[4:8], y[4:8])
    model_ptr.fit(x, y, max_iter=1, batch_size=16)  # a version kept in files
    model_ptr.step(x[0:4], y[0:4])
    changes = _changes(sqlite_node, model_ptr.id)
    assert [row.full for row in changes] == [True]  # the old chain is stale: gone
    stored, chain = _stored(sqlite_node, model_ptr.id)
    _assert_same(stored, _in_memory(sqlite_node, model_ptr.id).cart)
    assert chain == CartChain(base=changes[0].version, entries=0)
    # Rows 0-3 were in two steps and in the fit's pool: the reloaded cart knows it.
    assert stored.arrays()[stored.sources[0]]["pool"][:8].all()


def _cart(n: int = 100) -> Cart:
    cart = Cart()
    cart.ensure_source("d", n)
    cart.add_gaussian_rows("d", np.arange(10), sigma=1.0)
    return cart


def test_a_change_is_full_without_a_chain_and_forgets_everything_older() -> None:
    change = cart_change(_cart(), version=7, changed={"d": np.arange(10)}, chain=None)
    assert change.full and change.chain == CartChain(base=7, entries=0)
    assert change.forget_below == 7


def test_a_change_extends_the_chain_until_a_quarter_of_the_rows() -> None:
    cart, chain = _cart(100), CartChain(base=3, entries=10)
    change = cart_change(cart, version=5, changed={"d": np.arange(10)}, chain=chain)
    assert not change.full and change.chain == CartChain(base=3, entries=20)
    assert change.forget_below is None
    past = CartChain(base=3, entries=int(FULL_AFTER * 100) - 5)
    change = cart_change(cart, version=5, changed={"d": np.arange(10)}, chain=past)
    assert change.full and change.chain == CartChain(base=5, entries=0)
    assert change.forget_below == 3  # the chain ending at version 4 stays whole


def test_a_change_of_every_row_is_full() -> None:
    chain = CartChain(base=3, entries=0)
    change = cart_change(_cart(), version=4, changed={"d": None}, chain=chain)
    assert change.full and change.forget_below == 3


@pytest.mark.parametrize("rows", [np.array([5, 5, 1]), np.array([], dtype=np.int64)])
def test_a_change_lists_each_row_once(rows: np.ndarray) -> None:
    chain = CartChain(base=3, entries=0)
    change = cart_change(_cart(), version=4, changed={"d": rows}, chain=chain)
    assert not change.full
