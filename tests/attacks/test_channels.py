"""The privacy channels of issue 7, each written as the attack a data scientist would run
with the public client against a real node. Each must learn nothing it did not pay for:
what it sees may not differ between private values, except through charged noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

import veil
from tests.attacks.scenario import PUBLIC_PROGRESS
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from veil import nn
from veil.server.db.tables.models import ModelRow, ModelStateRow
from veil.server.services.checkpoints import decode_state, load_trainer

ROWS = 24


def _upload_digits(admin: veil.Client, *, label_bounds: tuple[float, float] | None) -> None:
    digits = load_digits()
    images = digits.images.astype(np.uint8)[:ROWS, None]
    labels = digits.target.astype(np.uint8)[:ROWS]
    bounds = {"images": (0, 16)} | ({} if label_bounds is None else {"labels": label_bounds})
    admin.datasets.upload(name="Digits", assets={"images": images, "labels": labels}, bounds=bounds)


def _classifier(classes: int) -> nn.Model:
    model = nn.Model()
    model.add(nn.Flatten(input_shape=(None, 1, 8, 8)))
    model.add(nn.Dense(classes, activation="softmax"))
    return model


def _outcome(call) -> tuple[str, str]:
    """What a data scientist observes of a call: its error type and text, or success."""
    try:
        result = call()
    except veil.VeilError as exc:
        return type(exc).__name__, str(exc)
    return "ok", repr(type(result))


@pytest.fixture
def node_and_admin(sqlite_node):
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    yield sqlite_node, admin
    admin.close()


def test_stepping_one_row_with_too_few_classes_is_no_label_oracle(node_and_admin) -> None:
    """Channel 1: a 3-class model stepped on single rows used to fail exactly for labels >= 3."""
    node, admin = node_and_admin
    _upload_digits(admin, label_bounds=None)  # uint8 labels, no declared range
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Digits"]
    labels = load_digits().target[:ROWS]
    assert set(labels[labels >= 3]) and set(labels[labels < 3])  # both kinds of rows
    model_ptr = _classifier(3).compile(to=ds)
    seen = set()
    for row in range(ROWS):
        x, y = data["images"][row : row + 1], data["labels"][row : row + 1]
        step = _outcome(lambda x=x, y=y: model_ptr.step(x, y))
        loss, preds = model_ptr.step(x, y)
        published = _outcome(lambda loss=loss: loss.publish(sigma=1.0).get())
        seen.add((step, published, preds.shape))
    assert len(seen) == 1 and next(iter(seen))[0][0] == "ok"
    evaluated = model_ptr.evaluate(data["images"], data["labels"], epsilon=1.0)
    assert evaluated["loss"] + 5 * evaluated["loss_std"] >= 0.0


def test_a_declared_label_range_is_a_public_refusal_the_same_for_every_row(node_and_admin) -> None:
    node, admin = node_and_admin
    _upload_digits(admin, label_bounds=(0, 9))
    ds = make_ds(admin, node)
    data = ds.datasets["Digits"]
    model_ptr = _classifier(3).compile(to=ds)
    outcomes = {
        _outcome(lambda r=row: model_ptr.step(data["images"][r : r + 1], data["labels"][r : r + 1]))
        for row in range(ROWS)
    }
    assert len(outcomes) == 1
    kind, message = outcomes.pop()
    assert kind == "ValidationError" and "declared by its owner with bounds [0, 9]" in message
    assert ds.privacy_budget.spent == 0.0


def _nan_above(threshold: float) -> nn.Model:
    """A model whose output is NaN exactly when some pixel is above `threshold`."""
    model = nn.Model()
    model.add(nn.Rescaling(1.0, offset=-threshold, input_shape=(None, 1, 8, 8)))
    model.add(nn.ReLU())
    for _ in range(7):  # (x - t) * 1e42 overflows to inf for x > t and stays 0 otherwise
        model.add(nn.Rescaling(1e6))
    model.add(nn.Flatten())
    model.add(nn.Dense(10, activation="softmax"))  # inf * w + (-inf) * w2 is NaN
    return model


def test_a_model_that_makes_nan_for_some_rows_is_no_oracle(node_and_admin) -> None:
    """Channel 2: NaN exactly where x > t used to make the paid release answer 500."""
    node, admin = node_and_admin
    _upload_digits(admin, label_bounds=(0, 9))
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Digits"]
    threshold = 15.5  # 3 of the 24 rows peak at 15, the others at 16
    above = (load_digits().images[:ROWS] > threshold).any(axis=(1, 2))
    assert above.any() and not above.all()
    model_ptr = _nan_above(threshold).compile(to=ds, loss=nn.CrossEntropy(), max_grad_norm=1.0)
    kinds = set()
    for row in range(ROWS):
        x, y = data["images"][row : row + 1], data["labels"][row : row + 1]
        loss, preds = model_ptr.step(x, y)
        loss_value = loss.publish(sigma=1.0).get()
        pred_value = preds.publish(sigma=1.0).get()
        assert np.isfinite(loss_value) and np.isfinite(pred_value).all()
        kinds.add((type(loss_value), pred_value.shape))
    assert len(kinds) == 1
    evaluated = model_ptr.evaluate(data["images"], data["labels"], epsilon=1.0)
    assert np.isfinite([evaluated["loss"], evaluated["accuracy"]]).all()
    weights = model_ptr.weights().publish().get()
    assert all(np.isfinite(w).all() for w in weights.values())


def test_predictions_are_noised_for_their_true_sensitivity(node_and_admin) -> None:
    """Channel 3: a 100-output sigmoid head was charged as if its rows had norm 1."""
    node, admin = node_and_admin
    images = load_digits().images[:ROWS, None].astype(np.uint8)
    admin.datasets.upload(
        name="Targets",
        assets={
            "x": images,
            "targets": np.zeros((ROWS, 100), np.float32),
            "digits": load_digits().target[:ROWS].astype(np.uint8),
        },
        bounds={"x": (0, 16), "targets": (0, 1), "digits": (0, 9)},
    )
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Targets"]
    wide = nn.Model()
    wide.add(nn.Flatten(input_shape=(None, 1, 8, 8)))
    wide.add(nn.Dense(100))
    wide.add(nn.Sigmoid())
    cases = [
        (wide.compile(to=ds, loss=nn.MeanSquaredError()), "targets", 10.0),  # sqrt(100)
        (_classifier(10).compile(to=ds), "digits", 1.0),  # a softmax row sums to one
    ]
    for model_ptr, labels, norm in cases:
        _, preds = model_ptr.step(data["x"][0:8], data[labels][0:8])
        released = preds.publish(sigma=2.0)
        entry = ds._http.get(f"/releases/{released.id}/result")["values"]["predictions"]
        assert entry["bound"] == {"kind": "rows", "norm": norm}
        assert entry["std"] == pytest.approx(2.0 * norm)


def test_progress_shows_public_counts_only(node_and_admin) -> None:
    """Channel 4: the exact number of Poisson-sampled rows was in progress()."""
    node, admin = node_and_admin
    _upload_digits(admin, label_bounds=(0, 9))
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Digits"]
    model_ptr = _classifier(10).compile(to=ds)
    model_ptr.fit(data["images"], data["labels"], max_iter=2, batch_size=4, wait=True)
    progress = model_ptr.progress()
    assert set(progress) == PUBLIC_PROGRESS
    assert progress["expected_samples"] == progress["steps"] * 4  # q x n_train = batch_size


def test_the_nodes_noise_is_secure_and_never_stored(node_and_admin) -> None:
    """Channel 5: noise from torch's Mersenne Twister, whose state was in the checkpoint,
    could be replayed from the raw draws a zero-gradient block shows in two publishes."""
    node, admin = node_and_admin
    _upload_digits(admin, label_bounds=(0, 9))
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Digits"]
    draws = []
    for _ in range(2):
        model = nn.Model()
        model.add(nn.Rescaling(0.0, input_shape=(None, 1, 8, 8)))  # zero input: zero gradient
        model.add(nn.Flatten())
        model.add(nn.Dense(10, activation="softmax"))
        model_ptr = model.compile(to=ds, optimizer=nn.SGD(lr=1.0))
        before = model_ptr.weights().publish().get()["2.weight"]
        model_ptr.step(data["images"][0:4], data["labels"][0:4])
        after = model_ptr.weights().publish().get()["2.weight"]
        draws.append(((after - before) * -4).ravel())  # lr 1, batch 4: the raw noise x C
        with node.ctx.db.session() as session:
            row = session.get(ModelRow, model_ptr.id)
            assert load_trainer(session, node.ctx.files, row).secure
            state = session.get(ModelStateRow, (row.id, row.version))  # a step stored it
            tensors, meta = decode_state(state.data)
        assert "rng.noise" not in tensors and "sampler" not in json.dumps(meta)
    for noise in draws:
        assert abs(noise.std() - 1.0) < 0.25  # sigma 1, clip 1
    assert abs(np.corrcoef(*draws)[0, 1]) < 5 / np.sqrt(draws[0].size)


def test_inputs_that_used_to_answer_500_are_refused_plainly(node_and_admin) -> None:
    node, admin = node_and_admin
    _upload_digits(admin, label_bounds=(0, 9))
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Digits"]
    model_ptr = _classifier(10).compile(to=ds)
    loss, _ = model_ptr.step(data["images"][0:4], data["labels"][0:4])
    for kwargs in ({"sigma": 1e300}, {"epsilon": 1e300}, {"sigma": 1e-300}):
        with pytest.raises(veil.ValidationError):
            loss.publish(**kwargs)
    for epsilon in (1e300, 1e-300):
        with pytest.raises(veil.ValidationError):
            model_ptr.evaluate(data["images"], data["labels"], epsilon=epsilon)
    with pytest.raises(veil.ValidationError, match="Rescaling"):
        model = nn.Model()
        model.add(nn.Rescaling(1e30, input_shape=(None, 1, 8, 8)))
    with pytest.raises(veil.ValidationError, match="scale"):
        ds.models.create(
            {
                "format": 1,
                "input_shape": [None, 1, 8, 8],
                "layers": [
                    {"class_name": "Rescaling", "config": {"scale": 1e30, "offset": 0.0}},
                    {"class_name": "Flatten", "config": {}},
                    {"class_name": "Dense", "config": {"units": 2, "activation": None}},
                ],
                "noise_multiplier": 1.0,
                "max_grad_norm": 1.0,
            }
        )
