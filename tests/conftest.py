"""Fixtures: a real node per test (SQLite and PostgreSQL), and clients logged into it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch

import veil
from tests.nodes import RunningNode, running_node

ADMIN_EMAIL = "admin@veil.dev"
ADMIN_PASSWORD = "changethis"
DS_PASSWORD = "ds-password-123"
_emails = itertools.count()


@pytest.fixture(autouse=True)
def _ieee_floats_in_the_test_thread() -> Iterator[None]:
    """A node made in this thread flushes denormals here and in the threads it starts
    (the server's, its jobs'); the test thread itself goes back to IEEE floats."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def node(request: pytest.FixtureRequest, tmp_path) -> Iterator[RunningNode]:
    """A fresh node on a free port, once on SQLite and once on PostgreSQL."""
    with running_node(tmp_path / "node", backend=request.param) as running:
        yield running


@pytest.fixture
def sqlite_node(tmp_path) -> Iterator[RunningNode]:
    """A fresh node on SQLite only, for tests whose subject is not the database."""
    with running_node(tmp_path / "node", backend="sqlite") as running:
        yield running


def login(node: RunningNode, email: str, password: str) -> veil.Client:
    return veil.login(email=email, password=password, url=node.url, verbose=False)


def make_ds(admin: veil.Client, node: RunningNode, *, budget: float = 10.0) -> veil.Client:
    email = f"ds{next(_emails)}@lab.org"
    admin.users.create(email=email, password=DS_PASSWORD, name="Data Scientist", budget=budget)
    return login(node, email, DS_PASSWORD)


@pytest.fixture
def admin(node: RunningNode) -> Iterator[veil.Client]:
    client = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    yield client
    client.close()


@pytest.fixture
def ds(admin: veil.Client, node: RunningNode) -> Iterator[veil.Client]:
    client = make_ds(admin, node)
    yield client
    client.close()
