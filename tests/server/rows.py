"""A small table the server's tests upload ("Rows": x of normal features, y whether
x's first is positive), and the one-unit logistic model they train on it."""

from __future__ import annotations

import numpy as np

import veil
from veil import nn


def upload_rows(admin: veil.Client, n: int, *, features: int = 6) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    admin.datasets.upload(
        name="Rows", assets={"x": x, "y": y}, bounds={"x": (-10, 10), "y": (0, 1)}
    )


def logistic(features: int = 6) -> nn.Model:
    model = nn.Model()
    model.add(nn.Dense(1, activation="sigmoid", input_shape=(None, features)))
    return model
