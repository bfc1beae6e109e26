"""What the dashboard tests and the screenshot script put on a node: small datasets,
data scientists, fits and releases, all through the Python client as users would."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np

import veil
from tests.conftest import DS_PASSWORD
from tests.flows.data import image_mlp, upload_images
from tests.nodes import RunningNode
from veil import nn

__all__ = [
    "DS_PASSWORD",
    "csrf_of",
    "dashboard",
    "image_mlp",
    "publish_small_fit",
    "start_long_fit",
    "table_fit",
    "upload_images",
    "upload_table",
    "wait_for",
]

TABLE_ROWS = 64


def upload_table(admin: veil.Client, name: str = "Tiny") -> None:
    rng = np.random.default_rng(1)
    admin.datasets.upload(
        name=name,
        description="four features in [0, 1] and a binary label",
        assets={
            "x": rng.uniform(0, 1, (TABLE_ROWS, 4)).astype(np.float32),
            "y": rng.integers(0, 2, TABLE_ROWS),
        },
        bounds={"x": (0, 1), "y": (0, 1)},
    )


def table_fit(  # noqa: ANN201 - a ModelPointer
    ds: veil.Client,
    *,
    max_iter: int = 1,
    batch_size: int = 16,
    wait: bool = True,
    target_epsilon: float | None = None,
):
    """A logistic regression fitted on the table; with `wait=False` it is left running."""
    model = nn.Model()
    model.add(nn.Dense(1, input_shape=(None, 4)))
    model.add(nn.Sigmoid())
    model_ptr = model.compile(to=ds, loss=nn.BinaryCrossEntropy())
    data = ds.datasets["Tiny"]
    model_ptr.fit(
        data["x"],
        data["y"],
        max_iter=max_iter,
        batch_size=batch_size,
        target_epsilon=target_epsilon,
        wait=False,
    )
    if wait:
        model_ptr.wait(show=False)
    return model_ptr


def publish_small_fit(ds: veil.Client) -> veil.Published:
    """One epoch on the table, then the model's weights published."""
    return table_fit(ds).weights().publish()


def start_long_fit(ds: veil.Client, dataset: str = "Patches"):  # noqa: ANN201 - a ModelPointer
    """A fit of many small steps on the images, left running (the caller cancels it),
    noised to cost at most epsilon 5 so that any test budget can afford it."""
    model_ptr = image_mlp().compile(to=ds)
    data = ds.datasets[dataset]
    model_ptr.fit(
        data["train_images"],
        data["train_labels"],
        max_iter=500,
        batch_size=8,
        target_epsilon=5.0,
        wait=False,
    )
    return model_ptr


def wait_for(condition, *, timeout: float = 30.0, every: float = 0.1):  # noqa: ANN001, ANN201
    """Poll `condition` until it returns something true; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(every)


def dashboard(node: RunningNode, email: str, password: str) -> httpx.Client:
    """An HTTP client logged into the dashboard (its session cookie set), as a browser is."""
    http = httpx.Client(base_url=node.url, follow_redirects=False, timeout=30)
    answer = http.post("/login", data={"email": email, "password": password})
    assert answer.status_code == 303 and answer.headers["location"] == "/", answer.text
    return http


def csrf_of(http: httpx.Client, path: str = "/") -> str:
    """The CSRF token a page's forms carry."""
    return re.search(r'name="csrf" value="([0-9a-f]+)"', http.get(path).text).group(1)
