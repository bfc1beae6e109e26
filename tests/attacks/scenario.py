"""What the red-team attack files share: a people dataset and a raw HTTP client."""

from __future__ import annotations

import httpx
import numpy as np

import veil

__all__ = ["PUBLIC_PROGRESS", "VISITS_PEOPLE", "raw_client", "upload_people"]

# Every field `progress()` may show: public counts and released metrics only.
PUBLIC_PROGRESS = frozenset(
    {
        "model_id",
        "status",
        "spent",
        "cart",
        "total_steps",
        "job_id",
        "epoch",
        "max_iter",
        "step",
        "steps",
        "expected_samples",
        "unit",
        "elapsed",
        "sigma",
        "error",
        "queue_position",
        "restarts",
        "metrics",
    }
)

# Rows 0-7 are one person (rank 0); rows 8-15 and 16-23 are persons 1..8: slices of the
# same public facts (rows, subjects) whose private grouping differs.
VISITS_PEOPLE = np.concatenate([np.zeros(8), np.arange(1, 9), np.arange(1, 9)]).astype(np.int64)


def upload_people(
    admin: veil.Client, name: str, person: np.ndarray, rng: np.random.Generator
) -> None:
    """A tabular dataset whose unit is the person: x (4 features), binary y, `person`."""
    rows = len(person)
    admin.datasets.upload(
        name=name,
        assets={
            "x": rng.normal(size=(rows, 4)).astype(np.float32),
            "y": rng.integers(0, 2, rows).astype(np.int64),
            "person": np.asarray(person).astype(np.int64),
        },
        bounds={"x": (-10, 10), "y": (0, 1), "person": (0, 100)},
        subject="person",
    )


def raw_client(node, client: veil.Client) -> httpx.Client:  # noqa: ANN001
    """HTTP with `client`'s token, for bodies the client would never send."""
    headers = {"Authorization": f"Bearer {client._http.token}"}
    return httpx.Client(base_url=node.url + "/api/v1", headers=headers, timeout=60)
