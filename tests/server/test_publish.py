"""Publishing weights and private objects over real HTTP: what is charged, what is
handed out, and who may see it."""

from __future__ import annotations

import numpy as np
import pytest

import veil
from tests.conftest import DS_PASSWORD, login, make_ds
from tests.server.ledger_fixtures import (
    SOURCE_ROWS,
    add_model,
    add_object,
    ledger_of,
    random_weights,
    sampled_cart,
    store_of,
    train_more,
    weights_on_disk,
)
from veil.privacy import EachRow, MeanOf, RdpCurve, gaussian
from veil.server.db.tables.models import ModelRow

DELTA = 1e-5
LOSS = MeanOf(high=1.0, fill=1.0)


def _equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_publish_charges_the_cart_once_then_only_the_increment(node, admin) -> None:
    ds = make_ds(admin, node, budget=10.0)
    store = store_of(node)
    first_cart = sampled_cart(200)
    model_id = add_model(store, owner_id=ds.user.id, cart=first_cart, weights=random_weights(0))
    weights = veil.WeightsPointer(ds._http, model_id)
    assert ds.privacy_budget.spent == 0.0

    first = weights.publish()
    cost = first_cart.epsilon(DELTA)
    assert first.kind == "weights" and first.model_id == model_id
    assert first.cost == pytest.approx(cost) and first.spent_after == pytest.approx(cost)
    budget = ds.privacy_budget
    assert (budget.total, budget.delta) == (10.0, DELTA)
    assert budget.spent == pytest.approx(cost) and budget.remaining == pytest.approx(10.0 - cost)
    assert _equal(first.get(), random_weights(0))

    again = weights.publish()
    assert again.cost == 0.0 and again.spent_after == pytest.approx(cost)

    more_cart = sampled_cart(500)
    version = train_more(store, model_id=model_id, cart=more_cart, weights=random_weights(1))
    later = weights.publish()
    assert later.spent_after == pytest.approx(more_cart.epsilon(DELTA))
    assert later.cost == pytest.approx(more_cart.epsilon(DELTA) - cost)
    assert _equal(later.get(), weights_on_disk(store, model_id, version))
    assert ledger_of(store, ds.user.id).curve == ledger_of(store, ds.user.id).release_curves

    # A paid result outlives the model's checkpoint files and the Python session.
    store.files.weights(model_id, 0).unlink()
    ds.close()
    again_ds = login(node, ds.user.email, DS_PASSWORD)
    releases = again_ds.releases
    assert [r.id for r in releases] == [first.id, again.id, later.id]
    assert _equal(releases[0].get(), random_weights(0))
    assert _equal(releases[-1].get(), random_weights(1))
    assert "Cost (epsilon)" in repr(releases) and "<table>" in releases._repr_html_()
    assert releases[1:][0].id == again.id
    with pytest.raises(veil.PermissionDenied, match=r"only through publish\(\)"):
        veil.WeightsPointer(again_ds._http, model_id).get()


def test_over_budget_releases_and_charges_nothing(node, admin) -> None:
    store = store_of(node)
    small, big = sampled_cart(10), sampled_cart(2_000)
    budget = small.epsilon(DELTA) + 0.5 * (big.epsilon(DELTA) - small.epsilon(DELTA))
    ds = make_ds(admin, node, budget=budget)
    cheap = add_model(store, owner_id=ds.user.id, cart=small, weights=random_weights(0))
    costly = add_model(store, owner_id=ds.user.id, cart=big, weights=random_weights(1))
    veil.WeightsPointer(ds._http, cheap).publish()
    before = ledger_of(store, ds.user.id)

    with pytest.raises(veil.BudgetExceeded) as refused:
        veil.WeightsPointer(ds._http, costly).publish()
    detail = refused.value.detail
    needed = (before.curve + big.curve()).epsilon(DELTA) - before.epsilon
    remaining = budget - before.epsilon
    assert detail["needed"] == pytest.approx(needed) and detail["budget"] == budget
    assert detail["remaining"] == pytest.approx(remaining)
    assert f"needs epsilon {needed:.6g}" in str(refused.value)
    assert f"only {remaining:.6g}" in str(refused.value)

    after = ledger_of(store, ds.user.id)
    assert (after.curve, after.releases) == (before.curve, 1)
    assert [p.name for p in store.files.release("x", "").parent.iterdir()] == [
        f"{ds.releases[0].id}.safetensors"
    ]
    with store.db.session() as session:
        assert RdpCurve.from_list(session.get(ModelRow, costly).charged_curve).is_zero
    assert ds.privacy_budget.spent == pytest.approx(before.epsilon)


def test_other_users_things_do_not_exist_for_a_data_scientist(node, admin) -> None:
    store = store_of(node)
    owner, other = make_ds(admin, node), make_ds(admin, node)
    model_id = add_model(
        store, owner_id=owner.user.id, cart=sampled_cart(10), weights=random_weights(0)
    )
    object_id = add_object(
        store, owner_id=owner.user.id, model_id=model_id, values=[1.0], rows=[0], bound=LOSS
    )
    with pytest.raises(veil.NotFound, match="No model"):
        veil.WeightsPointer(other._http, model_id).publish()
    with pytest.raises(veil.NotFound, match="No private object"):
        veil.PrivatePointer(other._http, object_id, "loss", ()).publish(sigma=1.0)
    release = veil.WeightsPointer(owner._http, model_id).publish()
    for path in (f"/releases/{release.id}", f"/releases/{release.id}/result"):
        with pytest.raises(veil.NotFound):
            other._http.get(path)
    assert len(other.releases) == 0 and other.privacy_budget.spent == 0.0
    with pytest.raises(veil.PermissionDenied):
        other.ledger  # noqa: B018 - the property is the request
    with pytest.raises(veil.PermissionDenied):
        other._http.get(f"/ledger/{owner.user.email}/releases")
    with pytest.raises(veil.NotFound):
        owner._http.post("/models/no-such-model/weights/publish")

    ledger = admin.ledger
    entry = ledger.entry(owner.user.email)
    assert entry.releases == 1 and entry.spent == pytest.approx(release.spent_after)
    assert entry.remaining == pytest.approx(entry.budget - entry.spent)
    assert ledger.entry(other.user.id).spent == 0.0
    assert owner.user.email in repr(ledger) and "Remaining" in repr(ledger)
    [seen] = ledger.releases(owner.user.email)
    assert seen.id == release.id and _equal(seen.get(), random_weights(0))


def test_private_object_publish_with_sigma_or_epsilon(node, admin) -> None:
    store = store_of(node)
    ds = make_ds(admin, node, budget=100.0)
    cart = sampled_cart(100)
    model_id = add_model(store, owner_id=ds.user.id, cart=cart, weights=random_weights(0))
    loss_id = add_object(
        store, owner_id=ds.user.id, model_id=model_id, values=[0.25] * 4, rows=range(4), bound=LOSS
    )
    loss = veil.PrivatePointer(ds._http, loss_id, "loss", ())
    assert repr(loss) == "<PrivatePointer loss shape=()>"
    with pytest.raises(veil.PermissionDenied, match="publish"):
        loss.get()

    noised = loss.publish(sigma=2.0)
    assert noised.kind == "object" and noised.object_id == loss_id
    assert noised.params["sigma"] == 2.0 and noised.params["n_rows"] == 4
    # The rows' Gaussian in the cart; the value also reveals the model, paid with it.
    expected = cart.curve() + gaussian(2.0)
    assert noised.spent_after == pytest.approx(expected.epsilon(DELTA))
    assert isinstance(noised.get(), float)
    entry = ds._http.get(f"/releases/{noised.id}/result")["values"]["loss"]
    assert entry["std"] == pytest.approx(2.0 * 1.0 / 4)  # sigma x loss_bound / rows

    targeted = loss.publish(epsilon=0.5)  # the same rows again: their costs add up
    sigma = targeted.params["sigma"]
    assert 0.5 * 0.99 < gaussian(sigma).epsilon(DELTA) <= 0.5
    expected = expected + gaussian(sigma)
    assert targeted.spent_after == pytest.approx(expected.epsilon(DELTA))
    assert ds.privacy_budget.spent == pytest.approx(targeted.spent_after)

    other_rows = add_object(
        store,
        owner_id=ds.user.id,
        model_id=model_id,
        values=[0.5] * 4,
        rows=range(4, 8),
        bound=LOSS,
    )
    parallel = veil.PrivatePointer(ds._http, other_rows, "loss", ()).publish(sigma=2.0)
    assert parallel.cost == pytest.approx(0.0, abs=1e-9)  # disjoint rows: parallel

    preds_id = add_object(
        store,
        owner_id=ds.user.id,
        model_id=model_id,
        values=np.ones((3, 2)),
        rows=range(3),
        bound=EachRow(1.0),
        kind="predictions",
    )
    preds = veil.PrivatePointer(ds._http, preds_id, "predictions", (3, 2)).publish(sigma=1.0)
    assert preds.get().shape == (3, 2)


def test_private_object_publish_refuses_what_it_cannot_honour(node, admin) -> None:
    store = store_of(node)
    ds = make_ds(admin, node)
    model_id = add_model(
        store, owner_id=ds.user.id, cart=sampled_cart(10), weights=random_weights(0)
    )
    bounded = veil.PrivatePointer(
        ds._http,
        add_object(
            store, owner_id=ds.user.id, model_id=model_id, values=[1.0], rows=[0], bound=LOSS
        ),
        "loss",
        (),
    )
    for kwargs in ({}, {"sigma": 1.0, "epsilon": 1.0}):
        with pytest.raises(veil.ValidationError, match="exactly one of sigma"):
            bounded.publish(**kwargs)
    for kwargs in ({"epsilon": 0.0}, {"sigma": 1.0, "clip": -2.0}):
        with pytest.raises(veil.ValidationError, match=">= 1e-300"):
            bounded.publish(**kwargs)
    for sigma, expected in ((-1.0, ">= 0.3"), (0.01, ">= 0.3"), (1e300, "<= 1000")):
        with pytest.raises(veil.ValidationError, match=f"sigma: Input should be {expected}"):
            bounded.publish(sigma=sigma)
    with pytest.raises(veil.ValidationError, match="least noise this node allows"):
        bounded.publish(epsilon=1e6)
    with pytest.raises(veil.ValidationError, match="most noise this node allows"):
        bounded.publish(epsilon=1e-9)
    unbounded = add_object(
        store,
        owner_id=ds.user.id,
        model_id=model_id,
        values=[[1.0], [2.0]],
        rows=range(2),
        bound=None,
        kind="predictions",
    )
    pointer = veil.PrivatePointer(ds._http, unbounded, "predictions", (2, 1))
    with pytest.raises(veil.ValidationError, match="no natural bound.*clip=c"):
        pointer.publish(sigma=1.0)
    assert len(ds.releases) == 0 and ledger_of(store, ds.user.id).curve.is_zero
    with pytest.raises(veil.BudgetExceeded, match="Nothing was released"):
        pointer.publish(sigma=0.3, clip=1.0)  # fine noise, but a budget of 10 cannot pay
    released = pointer.publish(sigma=5.0, clip=1.5)
    entry = ds._http.get(f"/releases/{released.id}/result")["values"]["predictions"]
    assert entry["std"] == pytest.approx(5.0 * 1.5) and entry["bound"] == {
        "kind": "rows",
        "norm": 1.5,
    }


def test_noise_has_the_declared_standard_deviation(sqlite_node) -> None:
    admin = login(sqlite_node, "admin@veil.dev", "changethis")
    store = store_of(sqlite_node)
    ds = make_ds(admin, sqlite_node, budget=1e6)
    model_id = add_model(
        store, owner_id=ds.user.id, cart=sampled_cart(10), weights=random_weights(0)
    )
    sigma, norm = 2.0, 0.5  # std = 1.0; each row's norm 0.05 * sqrt(20) stays unclipped

    vector_id = add_object(
        store,
        owner_id=ds.user.id,
        model_id=model_id,
        values=np.full((SOURCE_ROWS, 20), 0.05),
        rows=range(SOURCE_ROWS),
        bound=EachRow(norm),
        kind="predictions",
    )
    vector = veil.PrivatePointer(ds._http, vector_id, "predictions", (SOURCE_ROWS, 20))
    first, second = vector.publish(sigma=sigma).get(), vector.publish(sigma=sigma).get()
    for sample in (first, second):
        assert abs(sample.mean() - 0.05) < 5 / np.sqrt(sample.size)
        assert abs(sample.std() - 1.0) < 5 / np.sqrt(2 * sample.size)
    corr = np.corrcoef(first.ravel(), second.ravel())[0, 1]
    assert abs(corr) < 5 / np.sqrt(first.size)  # a fresh secure stream per release

    scalar_id = add_object(
        store,
        owner_id=ds.user.id,
        model_id=model_id,
        values=[0.3],
        rows=[0],
        bound=MeanOf(high=0.5, fill=0.5),
    )
    scalar = veil.PrivatePointer(ds._http, scalar_id, "loss", ())
    values = np.array([scalar.publish(sigma=sigma).get() for _ in range(100)])
    assert abs(values.mean() - 0.3) < 5 / np.sqrt(values.size)
    assert abs(values.std(ddof=1) - 1.0) < 5 / np.sqrt(2 * values.size)


def test_released_values_are_bounded_whatever_the_rows_hold(sqlite_node) -> None:
    """NaN, infinity and huge values become their fixed, bounded stand-ins before noise:
    the release is a number near the bounded mean, never an error (the NaN oracle)."""
    admin = login(sqlite_node, "admin@veil.dev", "changethis")
    store = store_of(sqlite_node)
    ds = make_ds(admin, sqlite_node, budget=1e6)
    model_id = add_model(
        store, owner_id=ds.user.id, cart=sampled_cart(10), weights=random_weights(0)
    )
    half = SOURCE_ROWS // 2
    poisoned = np.r_[np.full(half, np.nan), np.full(SOURCE_ROWS - half, 1e300)]
    loss_id = add_object(
        store,
        owner_id=ds.user.id,
        model_id=model_id,
        values=poisoned,
        rows=range(SOURCE_ROWS),
        bound=MeanOf(high=1.0, fill=1.0),
    )
    loss = veil.PrivatePointer(ds._http, loss_id, "loss", ()).publish(sigma=1.0).get()
    assert abs(loss - 1.0) < 5 * 1.0 / SOURCE_ROWS  # every row at the bound, std 1/n
    rows = np.full((SOURCE_ROWS, 3), 1e300)  # finite but huge: clipped to norm 1
    rows[::2, 1] = np.nan  # a row with any non-finite value: the zero row
    rows[::4, 2] = np.inf
    preds_id = add_object(
        store,
        owner_id=ds.user.id,
        model_id=model_id,
        values=rows,
        rows=range(SOURCE_ROWS),
        bound=EachRow(1.0),
        kind="predictions",
    )
    out = veil.PrivatePointer(ds._http, preds_id, "predictions", rows.shape).publish(sigma=0.3)
    values = out.get()
    assert np.isfinite(values).all() and abs(values[::2].mean()) < 5 * 0.3 / np.sqrt(1500)
    assert abs(values[1::2].mean() - 1 / np.sqrt(3)) < 5 * 0.3 / np.sqrt(1500)


def test_publish_without_weights_is_a_conflict(node, admin) -> None:
    store = store_of(node)
    ds = make_ds(admin, node)
    model_id = add_model(
        store, owner_id=ds.user.id, cart=sampled_cart(10), weights=random_weights(0)
    )
    store.files.weights(model_id, 0).unlink()
    with pytest.raises(veil.Conflict, match="no weights"):
        veil.WeightsPointer(ds._http, model_id).publish()
    assert ledger_of(store, ds.user.id).releases == 0
