"""Privacy per person: a dataset whose rows belong to data subjects, on a real node.

Everything a data scientist can reach is counted in subjects: the fit's sampling and
its quote (checked against Google's dp-accounting), the held-out part, the charges of
steps and evaluations (which must not depend on which rows share a subject: that is
private), and the releases.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

import veil
from veil import nn
from veil.server.services.data import resolve_pair
from veil.server.services.fits import plan_fit
from veil.server.services.models import get_model
from veil.server.services.users import get_user

PEOPLE = 30
FEATURES = 4


def _visits(seed: int = 0) -> dict[str, np.ndarray]:
    """PEOPLE people with 1 to 8 visits each; ids are arbitrary integers. Rows 0-7 are
    all person 5000's; rows 8-15 belong to eight different people."""
    rng = np.random.default_rng(seed)
    counts = np.concatenate([[8], np.ones(8, int), rng.integers(1, 9, PEOPLE - 9)])
    ids = np.repeat(5000 + np.arange(PEOPLE) * 7, counts)
    n = ids.size
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return {"x": x, "y": y, "person": ids}


def _upload(admin: veil.Client, name: str = "Visits") -> dict[str, np.ndarray]:
    data = _visits()
    admin.datasets.upload(
        name=name,
        assets=data,
        bounds={"x": (-10, 10), "y": (0, 1), "person": (0, 10**6)},
        subject="person",
    )
    return data


def _mlp() -> nn.Model:
    model = nn.Model()
    model.add(nn.Dense(8, activation="relu", input_shape=(None, FEATURES)))
    model.add(nn.Dense(1))
    model.add(nn.Sigmoid())
    return model


def _dp_accounting_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    accountant = RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(delta)


def test_a_fit_samples_people_and_is_priced_per_person(node, admin, ds) -> None:
    _upload(admin)
    visits = ds.datasets["Visits"]
    assert (visits.unit, visits.subjects) == ("subject", PEOPLE)
    model_ptr = _mlp().compile(to=ds)
    quote = model_ptr.quote(
        visits["x"], visits["y"], max_iter=2, batch_size=6, validation_split=0.2
    )
    # 24 training people (the last 6 of 30 are held out), not the rows they own
    assert (quote["unit"], quote["n_train"]) == ("subject", 24)
    assert quote["q"] == pytest.approx(6 / 24)
    assert quote["steps"] == 2 * 4
    expected = _dp_accounting_epsilon(6 / 24, quote["sigma"], quote["steps"], quote["delta"])
    assert quote["cart_after"] == pytest.approx(expected, rel=0.02)
    final = model_ptr.fit(
        visits["x"], visits["y"], max_iter=2, batch_size=6, validation_split=0.2, wait=True
    )
    assert final["status"] == "done" and final["unit"] == "subject"
    assert final["expected_samples"] == round(8 * 6 / 24 * 24)  # subjects, not rows
    # the validation releases settled the cart: spent + cart is what was quoted
    total = final["spent"] + final["cart"]
    assert total == pytest.approx(quote["spent"] + quote["cart_after"], rel=1e-6)
    assert [e["released"] for e in final["metrics"]] == [True, True]
    assert model_ptr.weights().publish().cost == pytest.approx(final["cart"], abs=1e-9)


def test_the_held_out_people_share_no_row_with_training(node, admin, ds) -> None:
    data = _upload(admin)
    visits = ds.datasets["Visits"]
    model_ptr = _mlp().compile(to=ds)
    ctx = node.ctx
    with ctx.db.session() as session:
        user = get_user(session, user_id_or_email=ds.user.email)
        model = get_model(session, user=user, model_id=model_ptr.id)
        plan = plan_fit(
            session,
            ctx.files,
            ctx.arrays,
            user=user,
            model=model,
            x_id=visits["x"].id,
            y_id=visits["y"].id,
            max_iter=1,
            batch_size=4,
            validation_split=0.2,
            target_epsilon=None,
        )
        pair = resolve_pair(
            session, ctx.arrays, user=user, x_id=visits["x"].id, y_id=visits["y"].id
        )
    ids = data["person"]
    assert not set(ids[plan.train_rows]) & set(ids[plan.val_rows])
    assert len(plan.train_rows) + len(plan.val_rows) == len(ids)
    # the split is by rank of the ids: the six largest ids are held out, whatever the data
    np.testing.assert_array_equal(plan.val_units, np.arange(24, 30))
    assert set(ids[plan.val_rows]) == set(np.unique(ids)[24:])
    assert pair.units.by_subject and pair.units.n == PEOPLE


def test_a_steps_price_does_not_say_whether_its_rows_share_a_person(node, admin, ds) -> None:
    """Rows 0-7 are one person's, rows 8-15 eight people's: a step on either batch must
    cost the same, or the cart would tell the data scientist which rows share a person."""
    _upload(admin)
    visits = ds.datasets["Visits"]
    carts, losses = [], []
    for rows in (slice(0, 8), slice(8, 16)):
        model_ptr = _mlp().compile(to=ds)
        loss, _ = model_ptr.step(visits["x"][rows], visits["y"][rows])
        carts.append(model_ptr.progress()["cart"])
        losses.append(loss)
    assert carts[0] == pytest.approx(carts[1], rel=1e-12)
    for loss in losses:
        assert np.isfinite(loss.publish(sigma=2.0).get())
    # and a step costs as one Gaussian over any person: two steps on disjoint rows add up
    model_ptr = _mlp().compile(to=ds)
    model_ptr.step(visits["x"][0:8], visits["y"][0:8])
    one = model_ptr.progress()["cart"]
    model_ptr.step(visits["x"][8:16], visits["y"][8:16])
    assert model_ptr.progress()["cart"] > one * 1.2


def test_evaluate_and_statistics_on_people(node, admin, ds) -> None:
    _upload(admin)
    visits = ds.datasets["Visits"]
    model_ptr = _mlp().compile(to=ds)
    first = model_ptr.evaluate(visits["x"][0:8], visits["y"][0:8], epsilon=0.5)
    second = model_ptr.evaluate(visits["x"][8:16], visits["y"][8:16], epsilon=0.5)
    # on rows (parallel composition) the second would cost nothing more; by subject
    # either batch may hold anyone, so the two compose
    assert second["cost"] > 0.3 * first["cost"] > 0
    assert 0.0 <= first["loss_clipped"] <= 1e6
    # over the whole asset, a mean over the 30 people (each one's own mean): one person
    # moves it by sqrt(2C) / 30, whatever rows it owns; over a slice, by sqrt(2C) / rows
    whole = visits["x"].statistics(sigma=1.0)
    assert whole.noise()["moments"] == pytest.approx(np.sqrt(2 * FEATURES) / PEOPLE)
    part = visits["x"][0:8].statistics(sigma=1.0)
    assert part.noise()["moments"] == pytest.approx(np.sqrt(2 * FEATURES) / 8)
    assert np.asarray(part.get()["std"]).shape == (FEATURES,)


def test_rows_per_subject_is_for_datasets_of_people(node, admin, ds) -> None:
    _upload(admin)
    admin.datasets.upload(
        name="Rows",
        assets={"x": np.zeros((20, FEATURES), np.float32), "y": np.zeros(20)},
        bounds={"x": (0, 1), "y": (0, 1)},
    )
    model_ptr = _mlp().compile(to=ds)
    rows = ds.datasets["Rows"]
    with pytest.raises(veil.ValidationError, match="unit is the row"):
        model_ptr.quote(rows["x"], rows["y"], max_iter=1, batch_size=4, rows_per_subject=2)
    visits = ds.datasets["Visits"]
    with pytest.raises(veil.ValidationError, match="rows_per_subject"):
        model_ptr.quote(visits["x"], visits["y"], max_iter=1, batch_size=4, rows_per_subject=0)
    # padding every person to that many rows would multiply the work: refused up front
    with pytest.raises(veil.ValidationError, match="rows_per_subject must be at most"):
        model_ptr.quote(visits["x"], visits["y"], max_iter=1, batch_size=4, rows_per_subject=10**9)
    with pytest.raises(veil.ValidationError, match="rows_per_subject: Input should be <="):
        model_ptr.quote(visits["x"], visits["y"], max_iter=1, batch_size=4, rows_per_subject=2**62)
    with pytest.raises(veil.ValidationError, match="at most the 30 training subjects"):
        model_ptr.quote(visits["x"], visits["y"], max_iter=1, batch_size=31)
    final = model_ptr.fit(visits["x"], visits["y"], max_iter=1, batch_size=5, rows_per_subject=2)
    assert final["status"] == "done" and final["step"] == 6


def test_a_fit_by_subject_takes_k_rows_of_each_person_by_default(node, admin, ds, monkeypatch):
    """All of each person's rows would make a step's work follow how many rows the
    people it drew own: by default k is the dataset's rows per person, rounded up."""
    from veil.engine._subjects import SubjectIndex

    data = _upload(admin)
    taken: list[int | None] = []
    original = SubjectIndex.gather

    def recording(self, chosen, *, rows_per_subject, uniform):  # noqa: ANN001, ANN202
        taken.append(rows_per_subject)
        return original(self, chosen, rows_per_subject=rows_per_subject, uniform=uniform)

    monkeypatch.setattr(SubjectIndex, "gather", recording)
    visits = ds.datasets["Visits"]
    final = _mlp().compile(to=ds).fit(visits["x"], visits["y"], max_iter=1, batch_size=5)
    assert final["status"] == "done"
    assert set(taken) == {math.ceil(len(data["person"]) / PEOPLE)}


def test_a_fit_does_not_say_whose_rows_a_slice_holds(node, admin, ds) -> None:
    """A one-row slice whose person is in the training part, and one whose person is
    held out: which is which is private, so both fits must run and report alike."""
    data = _upload(admin)
    visits = ds.datasets["Visits"]
    n = len(data["person"])
    outcomes = []
    for rows in (slice(0, 1), slice(n - 1, n)):  # the lowest id trains, the highest is held out
        model_ptr = _mlp().compile(to=ds)
        final = model_ptr.fit(
            visits["x"][rows], visits["y"][rows], max_iter=1, batch_size=2, validation_split=0.5
        )
        outcomes.append(
            (
                final["status"],
                final["steps"],
                final["expected_samples"],
                [sorted(m) for m in final["metrics"]],
                [m["released"] for m in final["metrics"]],
            )
        )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == "done" and outcomes[0][4] == [True]
