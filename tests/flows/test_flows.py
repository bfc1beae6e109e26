"""The three user flows of the reference, end to end against a real node."""

from __future__ import annotations

import numpy as np
import pytest

import veil
from tests.conftest import make_ds
from tests.flows.data import image_data, upload_images
from veil import nn
from veil.privacy import gaussian


def _layers() -> list[nn.Layer]:
    """The user flows' model, with a head that turns it into a classifier."""
    return [
        nn.Rescaling(1 / 255),
        nn.Convolution(1, (3, 3)),
        nn.MaxPool((2, 2)),
        nn.Convolution(2, (4, 4)),
        nn.MaxPool((2, 2)),
        nn.Flatten(),
        nn.Dense(1),
        nn.Sigmoid(),
    ]


def _local_model() -> nn.Model:
    model = nn.Model()
    model.add(nn.Convolution(1, (3, 3), input_shape=(None, 1, 28, 28)))
    for layer in _layers()[2:]:
        model.add(layer)
    return model


def test_flow_one_builds_the_whole_model_remotely(admin, ds) -> None:
    upload_images(admin)
    data = ds.datasets["Patches"]
    model_ptr = nn.Model(to=ds)
    model_ptr.add(nn.Convolution(1, (3, 3), input_shape=(None, 1, 28, 28)))
    model_ptr.add(nn.MaxPool((2, 2)))
    model_ptr.add(nn.Convolution(2, (4, 4)))
    model_ptr.add(nn.MaxPool((2, 2)))
    model_ptr.add(nn.Flatten())
    model_ptr.add(nn.Dense(1))
    model_ptr.add(nn.Sigmoid())
    with pytest.raises(veil.SpecError, match=r"Layer 1 \(Convolution\).*\(None, 3\)"):
        bad = nn.Model(to=ds)
        bad.add(nn.Dense(3, input_shape=(None, 4)))
        bad.add(nn.Convolution(1, (3, 3)))
    model_ptr = model_ptr.compile(to=ds, loss=nn.BinaryCrossEntropy(), optimizer=nn.Adamax())
    assert model_ptr.output_shape == (None, 1)
    final = model_ptr.fit(
        data["train_images"], data["train_labels"], max_iter=2, validation_split=0.1, batch_size=50
    )
    assert final["status"] == "done" and final["epoch"] == 2
    published = model_ptr.weights().publish()
    weights = published.get()
    # the per-epoch validation metrics revealed the model, so they paid for it already
    assert published.spent_after == pytest.approx(ds.privacy_budget.spent)
    assert published.spent_after > 0
    assert {w.shape for w in weights.values()} >= {(1, 1, 3, 3), (2, 1, 4, 4)}


def test_flow_two_trains_remotely_and_predicts_locally(admin, ds, node) -> None:
    upload_images(admin)
    images, labels = ds.datasets["Patches"]["train_images"], ds.datasets["Patches"]["train_labels"]
    model = nn.Model()
    model.add(nn.Rescaling(1 / 255, input_shape=(None, 1, 28, 28)))
    for layer in _layers()[1:]:
        model.add(layer)
    model_ptr = model.compile(
        to=ds,
        loss=nn.BinaryCrossEntropy(),
        optimizer=nn.Adamax(),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    job = model_ptr.fit(images, labels, max_iter=3, validation_split=0.1, batch_size=40, wait=False)
    assert job["status"] == "queued" and job["sigma"] == 1.0
    final = model_ptr.wait(show=False)
    progress = model_ptr.progress()
    assert progress["status"] == "done" and progress["epoch"] == 3 == progress["max_iter"]
    assert progress["step"] == progress["steps"] and "samples_seen" not in progress
    # step x the expected batch size (q x n_train = 40): public, whatever was sampled
    assert progress["expected_samples"] == progress["steps"] * 40
    assert progress["cart"] == pytest.approx(0.0, abs=1e-9)  # metrics released: cart paid
    metrics = progress["metrics"]
    assert [m["epoch"] for m in metrics] == [1, 2, 3] and all(m["released"] for m in metrics)
    assert all(0 <= m["val_accuracy_clipped"] <= 1 for m in metrics)
    assert final["cart"] == pytest.approx(0.0, abs=1e-9) and final["spent"] > 0
    assert ds.privacy_budget.spent == pytest.approx(final["spent"], rel=1e-6)
    published = model_ptr.weights().publish()
    assert published.cost == pytest.approx(0.0, abs=1e-9)  # already paid by metrics
    model.set_weights(published.get())
    x, _ = image_data(n=16, seed=3)
    with node.ctx.db.session() as session:
        from veil.server.db.tables.models import ModelRow
        from veil.server.services.checkpoints import load_trainer

        trainer = load_trainer(session, node.ctx.files, session.get(ModelRow, model_ptr.id))
    np.testing.assert_allclose(model.predict(x), trainer.predict(x), rtol=1e-5, atol=1e-6)


def test_flow_three_steps_batch_by_batch(admin, ds) -> None:
    upload_images(admin, n=96)
    train_x = ds.datasets["Patches"]["train_images"]
    train_y = ds.datasets["Patches"]["train_labels"]
    model_ptr = _local_model().compile(to=ds)
    batch_size, rows, epochs = 32, train_y.public_shape[0], 2
    losses = []
    for _ in range(epochs):
        for i in range(rows // batch_size):
            begin = i * batch_size
            loss, preds_ptr = model_ptr.step(
                train_x[begin : begin + batch_size],
                train_y[begin : begin + batch_size],
                validation_split=0.1,
                batch_size=100,
            )
            losses.append(loss)
    with pytest.raises(veil.PermissionDenied, match="publish"):
        preds_ptr.get()
    assert "loss" in repr(losses[0]) and len(losses) == epochs * (rows // batch_size)
    delta = ds.privacy_budget.delta
    info = model_ptr.refresh()
    # no amplification: each row took part in `epochs` Gaussian steps at sigma=1
    expected = gaussian(1.0, count=epochs).epsilon(delta)
    assert model_ptr.progress()["cart"] == pytest.approx(expected, rel=1e-6)
    assert info.spec["noise_multiplier"] == 1.0
    released = losses[-1].publish(sigma=5.0)
    value = released.get()
    assert np.isfinite(value)


def test_evaluate_releases_noised_metrics_and_charges(admin, ds) -> None:
    upload_images(admin)
    data = ds.datasets["Patches"]
    model_ptr = _local_model().compile(to=ds)
    before = ds.privacy_budget.spent
    out = model_ptr.evaluate(data["train_images"][0:100], data["train_labels"][0:100], epsilon=0.5)
    assert set(out) >= {"loss", "loss_std", "loss_clipped", "accuracy", "cost", "spent_after"}
    assert 0 <= out["loss_clipped"] <= model_ptr.spec["loss_bound"]
    assert 0 <= out["accuracy_clipped"] <= 1
    assert ds.privacy_budget.spent == pytest.approx(out["spent_after"])
    assert out["spent_after"] > before
    assert 0.45 < out["cost"] <= 0.5  # an untrained model: only the metrics cost


def test_quote_matches_what_the_fit_adds(admin, ds) -> None:
    upload_images(admin)
    data = ds.datasets["Patches"]
    model_ptr = _local_model().compile(to=ds, noise_multiplier=1.5)
    quote = model_ptr.quote(data["train_images"], data["train_labels"], max_iter=2, batch_size=40)
    assert quote["cart"] == 0.0 and quote["spent"] == 0.0
    assert quote["cart_after"] == pytest.approx(quote["cost"])
    model_ptr.fit(data["train_images"], data["train_labels"], max_iter=2, batch_size=40)
    assert model_ptr.progress()["cart"] == pytest.approx(quote["cost"], rel=1e-6)
    model_ptr.weights().publish()
    # Quotes speak of what a fit adds to what is spent: with something spent, RDP composes
    # and the second fit adds less than the first did alone.
    again = model_ptr.quote(data["train_images"], data["train_labels"], max_iter=2, batch_size=40)
    assert again["spent"] == pytest.approx(quote["cost"]) and again["cart"] == 0.0
    assert 0 < again["cost"] < quote["cost"]
    model_ptr.fit(data["train_images"], data["train_labels"], max_iter=2, batch_size=40)
    assert model_ptr.progress()["cart"] == pytest.approx(again["cost"], rel=1e-6)
    assert model_ptr.weights().publish().cost == pytest.approx(again["cost"], rel=1e-6)
    target = model_ptr.quote(
        data["train_images"], data["train_labels"], max_iter=1, batch_size=40, target_epsilon=0.7
    )
    assert target["cost"] <= 0.7 and target["sigma"] > 0


def test_a_data_scientist_cannot_touch_another_users_model(admin, ds, node) -> None:
    upload_images(admin)
    model_ptr = _local_model().compile(to=ds)
    other = make_ds(admin, node)
    with pytest.raises(veil.NotFound):
        other.models.get(model_ptr.id)
    stolen = veil.client._models.ModelPointer(other._http, model_ptr._info)
    with pytest.raises(veil.NotFound):
        stolen.weights().publish()
    with pytest.raises(veil.NotFound):
        stolen.progress()
    data = other.datasets["Patches"]
    x, y = data["train_images"][0:8], data["train_labels"][0:8]
    with pytest.raises(veil.NotFound):
        stolen.step(x, y)  # checked in the step's own thread, before anything is read
    token = other._http.token
    other.logout()
    other._http.token = token  # revoked now: the step's thread checks it, and refuses
    with pytest.raises(veil.AuthenticationError, match="revoked"):
        veil.client._models.ModelPointer(other._http, model_ptr._info).step(x, y)
    assert model_ptr.refresh()._info["steps"] == 0


def test_bad_training_input_fails_before_training(admin, ds) -> None:
    upload_images(admin)
    data = ds.datasets["Patches"]
    model_ptr = _local_model().compile(to=ds)
    with pytest.raises(veil.ValidationError, match="same number of rows"):
        model_ptr.fit(data["train_images"][0:100], data["train_labels"][0:90])
    with pytest.raises(veil.ValidationError, match="batch_size"):
        model_ptr.fit(data["train_images"], data["train_labels"], batch_size=10_000)
    with pytest.raises(veil.ValidationError, match="validation_split"):
        model_ptr.fit(data["train_images"], data["train_labels"], validation_split=1.5)
    wrong = nn.Model()
    wrong.add(nn.Flatten(input_shape=(None, 3, 28, 28)))
    wrong.add(nn.Dense(1, activation="sigmoid"))
    with pytest.raises(veil.ValidationError):
        wrong.compile(to=ds).fit(data["train_images"], data["train_labels"])
    assert ds.privacy_budget.spent == 0.0


def test_released_values_show_their_noise_and_a_clipped_value(admin, node) -> None:
    upload_images(admin)
    ds = make_ds(admin, node, budget=1000.0)
    data = ds.datasets["Patches"]
    model_ptr = _local_model().compile(to=ds)
    loss, preds = model_ptr.step(data["train_images"][0:20], data["train_labels"][0:20])
    released = loss.publish(sigma=0.5)
    noise = released.noise()["loss"]
    assert noise == pytest.approx(0.5 * model_ptr.spec["loss_bound"] / 20)
    assert "loss" in repr(released) and "±" in repr(released) and "cost epsilon" in repr(released)
    assert 0 <= released.get(clipped=True) <= model_ptr.spec["loss_bound"]
    again = ds.releases[-1]  # from the node's list: the same values, fetched
    assert again.get() == released.get() and again.noise() == released.noise()
    probabilities = preds.publish(sigma=1.0).get(clipped=True)
    assert probabilities.shape == (20, 1) and ((probabilities >= 0) & (probabilities <= 1)).all()


def test_a_fit_whose_metrics_are_withheld_says_so(admin, node) -> None:
    """The budget is checked when a fit is queued; if the owner lowers it before the fit
    runs, its validation metrics cannot be paid for: they are withheld, and said so."""
    upload_images(admin)
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Patches"]
    x, y = data["train_images"], data["train_labels"]
    blocker = _local_model().compile(to=ds)
    blocker.fit(x, y, max_iter=3000, batch_size=8, wait=False)  # holds the user's one slot
    model_ptr = _local_model().compile(to=ds)
    model_ptr.fit(x, y, max_iter=2, validation_split=0.2, wait=False)
    assert model_ptr.progress()["queue_position"] == 1
    admin.users.set_budget(ds.user.email, 1e-6)
    blocker.cancel()
    with pytest.warns(veil.MetricsWithheld, match="epoch.*1, 2.*withheld"):
        final = model_ptr.wait(show=False)
    assert final["status"] == "done" and ds.privacy_budget.spent == 0.0
