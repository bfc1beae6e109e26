"""The utility bar: a DP fit on the demo Wisconsin data, published and evaluated locally."""

from __future__ import annotations

import numpy as np

from tests.conftest import make_ds
from veil import demo, nn
from veil.server.demo import ensure_demo_datasets


def test_dp_fit_on_wisconsin_reaches_90_percent_at_epsilon_3(sqlite_node) -> None:
    from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login

    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    ensure_demo_datasets(sqlite_node.ctx)
    ds = make_ds(admin, sqlite_node, budget=3.0)
    data = ds.datasets["BreastCancerWisconsin"]
    test_x, test_y = demo.public_test_split("BreastCancerWisconsin")
    # Normalisation constants come from the public split: the DS never sees private rows.
    model = nn.Model()
    model.add(
        nn.Normalization(
            mean=test_x.mean(axis=0).tolist(),
            std=(test_x.std(axis=0) + 1e-6).tolist(),
            input_shape=(None, 30),
        )
    )
    model.add(nn.Dense(1))
    model.add(nn.Sigmoid())
    model_ptr = model.compile(
        to=ds, loss=nn.BinaryCrossEntropy(), optimizer=nn.Adam(lr=0.05), max_grad_norm=1.0
    )
    model_ptr.fit(
        data["features"],
        data["labels"],
        max_iter=15,
        batch_size=64,
        target_epsilon=2.5,
        wait=True,
    )
    published = model_ptr.weights().publish()
    budget = ds.privacy_budget
    assert budget.spent <= 3.0 and budget.delta == 1e-5
    model.set_weights(published.get())
    accuracy = float(np.mean((model.predict(test_x)[:, 0] > 0.5) == test_y))
    assert accuracy >= 0.90, accuracy
