"""The ledger under load and across crashes: no charge without its release, no release
without its charge, and never more spent than the budget."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, DS_PASSWORD, login, make_ds
from tests.nodes import fresh_postgres_url, node_process
from tests.server.ledger_fixtures import (
    NodeStore,
    add_model,
    ledger_of,
    random_weights,
    sampled_cart,
    store_of,
)
from veil.client._http import Http
from veil.privacy import RdpCurve
from veil.server.db.engine import Database
from veil.server.db.tables.accounts import UserRow
from veil.server.services import ledger
from veil.server.services.releases import sweep_orphans
from veil.server.storage.files import NodeFiles

DELTA = 1e-5
N_PUBLISHES = 32
K_PAID = 5


def test_charge_refuses_to_run_outside_a_write_session(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    with sqlite_node.ctx.db.session() as session:
        user = session.get(UserRow, admin.user.id)
        with pytest.raises(RuntimeError, match="write_session"):
            ledger.charge(
                session,
                user=user,
                curve_added=sampled_cart(10).curve(),
                delta=DELTA,
                kind="weights",
                mechanism="dp-sgd",
                params={},
            )


def test_concurrent_publishes_pay_for_exactly_what_the_budget_allows(node, admin) -> None:
    store = store_of(node)
    cart = sampled_cart(300)
    curve = cart.curve()
    paid, unpaid = (curve * K_PAID).epsilon(DELTA), (curve * (K_PAID + 1)).epsilon(DELTA)
    budget = (paid + unpaid) / 2
    owner = make_ds(admin, node, budget=budget)
    models = [
        add_model(store, owner_id=owner.user.id, cart=cart, weights=random_weights(i))
        for i in range(N_PUBLISHES)
    ]
    clients = [Http(node.url) for _ in models]  # one connection each, one login for all
    for client in clients:
        client.token = owner._http.token
    start = threading.Barrier(N_PUBLISHES)
    outcomes: list[object] = [None] * N_PUBLISHES

    def publish(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = veil.WeightsPointer(clients[i], models[i]).publish()
        except veil.VeilError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(N_PUBLISHES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    published = [o for o in outcomes if isinstance(o, veil.Published)]
    refused = [o for o in outcomes if isinstance(o, veil.BudgetExceeded)]
    assert (len(published), len(refused)) == (K_PAID, N_PUBLISHES - K_PAID), outcomes
    assert sorted(p.spent_after for p in published)[-1] == pytest.approx(paid)
    spent = owner.privacy_budget
    assert spent.spent == pytest.approx(paid) and spent.spent <= spent.total
    state = ledger_of(store, owner.user.id)
    assert state.releases == K_PAID and state.curve == state.release_curves
    assert len(list(store.files.release("x", "").parent.iterdir())) == K_PAID


# --- crash safety: a node in its own process, killed inside a publish ---------------


def _connect(url: str, email: str, password: str) -> veil.Client:
    return veil.login(email=email, password=password, url=url, verbose=False)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_crash_inside_publish_leaves_release_and_charge_together(tmp_path, backend) -> None:
    data_dir, cart = tmp_path / "node", sampled_cart(100)
    with fresh_postgres_url() if backend == "postgres" else _no_url() as database_url:
        store = NodeStore(
            db=Database(database_url or f"sqlite:///{data_dir / 'veil.db'}"),
            files=NodeFiles(data_dir),
        )
        # Killed after linking the file, before the commit: neither release nor charge.
        with node_process(data_dir, database_url, "publish.before_commit") as url:
            admin = _connect(url, ADMIN_EMAIL, ADMIN_PASSWORD)
            user = admin.users.create(email="crash@lab.org", password=DS_PASSWORD, budget=10.0)
            model_id = add_model(store, owner_id=user.id, cart=cart, weights=random_weights(0))
            ds = _connect(url, user.email, DS_PASSWORD)
            with pytest.raises(veil.TransportError):
                veil.WeightsPointer(ds._http, model_id).publish()

        # Killed right after the commit: release and charge both stand.
        with node_process(data_dir, database_url, "publish.after_commit") as url:
            ds = _connect(url, user.email, DS_PASSWORD)
            state = ledger_of(store, user.id)
            assert (state.releases, state.curve) == (0, RdpCurve.zero())
            assert len(ds.releases) == 0 and ds.privacy_budget.spent == 0.0
            [orphan] = sweep_orphans(store.db, store.files, grace_s=0)
            assert orphan.suffix == ".safetensors" and not orphan.exists()
            with pytest.raises(veil.TransportError):
                veil.WeightsPointer(ds._http, model_id).publish()

        with node_process(data_dir, database_url, None) as url:
            ds = _connect(url, user.email, DS_PASSWORD)
            state = ledger_of(store, user.id)
            assert state.releases == 1 and state.curve == state.release_curves == cart.curve()
            assert ds.privacy_budget.spent == pytest.approx(cart.epsilon(DELTA))
            assert sweep_orphans(store.db, store.files, grace_s=0) == []
            [release] = ds.releases
            assert set(release.get()) == set(random_weights(0))
            again = veil.WeightsPointer(ds._http, model_id).publish()
            assert again.cost == 0.0
        store.db.dispose()


@contextmanager
def _no_url() -> Iterator[None]:
    yield None
