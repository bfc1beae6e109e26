"""Training jobs: cancel, failure reporting, size limits, restarts, a responsive node."""

from __future__ import annotations

import threading
import time

import pytest

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.flows.data import image_mlp, upload_images
from tests.nodes import running_node

# Long fits that a test cancels: the budget must be able to pay for all of them, or the
# node refuses them up front.
LONG_FIT_BUDGET = 1e6


def test_cancel_stops_a_job_and_keeps_what_it_trained(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=400)
    ds = make_ds(admin, sqlite_node, budget=LONG_FIT_BUDGET)
    data = ds.datasets["Patches"]
    model_ptr = image_mlp().compile(to=ds)
    model_ptr.fit(
        data["train_images"], data["train_labels"], max_iter=500, batch_size=8, wait=False
    )
    deadline = time.monotonic() + 30
    while model_ptr.progress()["step"] < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    # the node answers other requests while it trains
    assert ds.privacy_budget.remaining == LONG_FIT_BUDGET
    model_ptr.cancel()
    final = model_ptr.wait(show=False)
    assert final["status"] == "cancelled" and 0 < final["step"] < final["steps"]
    assert final["total_steps"] == model_ptr.refresh()._info["steps"] > 0
    assert final["cart"] > 0  # what was trained is in the cart
    published = model_ptr.weights().publish()
    assert published.cost == pytest.approx(final["cart"], rel=1e-6)


def test_a_model_over_the_size_limit_is_refused(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert admin.update_node(max_params=1000)["max_params"] == 1000
    ds = make_ds(admin, sqlite_node)
    with pytest.raises(veil.SpecError, match="param"):
        image_mlp().compile(to=ds)


def test_batchnorm_and_unknown_layers_are_refused_by_the_node(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    ds = make_ds(admin, sqlite_node)
    spec = image_mlp().to_spec()
    spec["layers"].append({"class_name": "BatchNorm", "config": {}})
    with pytest.raises(veil.SpecError, match="GroupNorm"):
        ds.models.create(spec)
    spec["layers"][-1] = {"class_name": "Lambda", "config": {"code": "import os"}}
    with pytest.raises(veil.SpecError, match="Dense"):
        ds.models.create(spec)


def test_the_owner_upload_refuses_nan_and_values_outside_their_bounds(sqlite_node) -> None:
    import numpy as np

    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    images = np.zeros((50, 1, 28, 28), dtype=np.float32)
    images[3, 0, 0, 0] = np.nan
    labels = np.zeros(50, dtype=np.int64)
    with pytest.raises(veil.ValidationError, match=r"finite values.*at row 3"):
        admin.datasets.upload(
            name="Broken", assets={"x": images, "y": labels}, bounds={"x": (0, 1), "y": (0, 1)}
        )
    labels[7] = 5
    with pytest.raises(veil.ValidationError, match=r"within the declared bounds \[0, 1\].*row 7"):
        admin.datasets.upload(
            name="Broken",
            assets={"x": np.zeros((50, 1, 28, 28), np.float32), "y": labels},
            bounds={"x": (0, 1), "y": (0, 1)},
        )
    with pytest.raises(veil.ValidationError, match="same number of rows"):
        admin.datasets.upload(
            name="Broken",
            assets={"x": np.zeros((50, 1, 28, 28), np.float32), "y": np.zeros(49, np.int64)},
            bounds={"x": (0, 1), "y": (0, 1)},
        )
    assert [d.name for d in admin.datasets] == []  # nothing half-written


def test_labels_declared_outside_the_model_are_refused_up_front(sqlite_node) -> None:
    import numpy as np

    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    admin.datasets.upload(
        name="Four",
        assets={"x": np.zeros((50, 1, 28, 28), np.float32), "y": np.arange(50) % 4},
        bounds={"x": (0, 1), "y": (0, 3)},
    )
    ds = make_ds(admin, sqlite_node)
    data = ds.datasets["Four"]
    model_ptr = image_mlp().compile(to=ds)  # one sigmoid output: labels in [0, 1]
    for attempt in (
        lambda: model_ptr.fit(data["x"], data["y"], max_iter=1, batch_size=10),
        lambda: model_ptr.quote(data["x"], data["y"], max_iter=1, batch_size=10),
        lambda: model_ptr.step(data["x"][0:1], data["y"][0:1]),
        lambda: model_ptr.evaluate(data["x"], data["y"], epsilon=1.0),
    ):
        with pytest.raises(
            veil.ValidationError, match=r"declared by its owner with bounds \[0, 3\]"
        ):
            attempt()
    assert model_ptr.progress()["status"] == "idle"
    assert ds.privacy_budget.spent == 0.0


def test_steps_survive_a_restart(tmp_path) -> None:
    with running_node(tmp_path / "n") as node:
        admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
        upload_images(admin, n=64)
        ds = make_ds(admin, node)
        data = ds.datasets["Patches"]
        model_ptr = image_mlp().compile(to=ds)
        model_ptr.step(data["train_images"][0:32], data["train_labels"][0:32])
        before = model_ptr.progress()["cart"]
        email = ds.user.email
    with running_node(tmp_path / "n") as node:
        ds = login(node, email, "ds-password-123")
        model_ptr = ds.models.get(model_ptr.id)
        data = ds.datasets["Patches"]
        assert model_ptr.progress()["cart"] == pytest.approx(before)
        model_ptr.step(data["train_images"][32:64], data["train_labels"][32:64])
        assert model_ptr.progress()["cart"] == pytest.approx(before)  # disjoint rows
        assert model_ptr.refresh()._info["steps"] == 2


def test_a_training_model_refuses_steps(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=400)
    ds = make_ds(admin, sqlite_node, budget=LONG_FIT_BUDGET)
    data = ds.datasets["Patches"]
    model_ptr = image_mlp().compile(to=ds)
    model_ptr.fit(
        data["train_images"], data["train_labels"], max_iter=200, batch_size=8, wait=False
    )
    with pytest.raises(veil.Conflict):
        model_ptr.step(data["train_images"][0:8], data["train_labels"][0:8])
    with pytest.raises(veil.Conflict):
        model_ptr.fit(data["train_images"], data["train_labels"], wait=False)
    model_ptr.cancel()
    model_ptr.wait(show=False)


def test_many_clients_are_served_while_training(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=400)
    ds = make_ds(admin, sqlite_node, budget=LONG_FIT_BUDGET)
    data = ds.datasets["Patches"]
    model_ptr = image_mlp().compile(to=ds)
    model_ptr.fit(
        data["train_images"], data["train_labels"], max_iter=200, batch_size=8, wait=False
    )
    answers: list[str] = []

    def read() -> None:
        for _ in range(5):
            answers.append(ds.datasets[0].name)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert answers == ["Patches"] * 20
    model_ptr.cancel()
    model_ptr.wait(show=False)


def test_a_failing_job_reports_why_and_charges_nothing(sqlite_node, monkeypatch) -> None:
    from veil.engine import DPTrainer

    def broken_fit(self, *args, **kwargs):
        raise RuntimeError("the disk went away")

    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=100)
    ds = make_ds(admin, sqlite_node)
    data = ds.datasets["Patches"]
    model_ptr = image_mlp().compile(to=ds)
    monkeypatch.setattr(DPTrainer, "fit", broken_fit)
    with pytest.raises(veil.JobFailed, match="Internal error on the node"):
        model_ptr.fit(data["train_images"], data["train_labels"], max_iter=1, batch_size=10)
    progress = model_ptr.progress()
    assert progress["status"] == "failed" and "reference" in progress["error"]
    # An unexpected error's text may quote a value, and its type may depend on one.
    assert "disk" not in progress["error"] and "RuntimeError" not in progress["error"]
    assert ds.privacy_budget.spent == 0.0 and progress["cart"] == 0.0
    monkeypatch.undo()
    model_ptr.fit(data["train_images"], data["train_labels"], max_iter=1, batch_size=10)
    assert model_ptr.progress()["status"] == "done"


def test_the_admin_sets_the_nodes_delta(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    ds = make_ds(admin, sqlite_node)
    assert ds.privacy_budget.delta == 1e-5
    admin.update_node(delta=1e-6)
    assert ds.privacy_budget.delta == 1e-6
    with pytest.raises(veil.PermissionDenied):
        ds.update_node(delta=0.1)
    with pytest.raises(veil.ValidationError, match="delta"):
        admin.update_node(delta=2.0)


def test_a_failed_step_keeps_no_uncounted_training(sqlite_node, monkeypatch) -> None:
    from veil.server.services import steps

    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=64)
    ds = make_ds(admin, sqlite_node)
    data = ds.datasets["Patches"]
    model_ptr = image_mlp().compile(to=ds)
    x, y = data["train_images"][0:32], data["train_labels"][0:32]
    model_ptr.step(x, y)
    before = model_ptr.weights().publish().get()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(steps, "encode_state", broken)
    with pytest.raises(veil.ServerError) as failed:
        model_ptr.step(x, y)
    # Told by a random reference only: not the error's text nor its type.
    assert "disk" not in str(failed.value) and "OSError" not in str(failed.value)
    assert failed.value.detail["reference"] in str(failed.value)
    # The step charged the model's cart in memory: the failure forgot the whole model,
    # so the next step reloads the stored cart rather than count this batch twice.
    version = model_ptr.refresh()._info["version"]
    assert sqlite_node.ctx.live.cached(model_ptr.id, version) is None
    monkeypatch.undo()
    after = model_ptr.weights().publish()
    assert after.cost == 0.0  # nothing new was trained as far as the node knows
    for name, value in after.get().items():
        assert (value == before[name]).all(), name  # and the weights agree
