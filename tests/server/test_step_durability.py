"""A flow III step commits without waiting for the disk (`services.steps`): what that
may lose, and that it never splits a step from its count.

- A node killed inside a step keeps all of the step (weights, cart count, objects) or
  none of it, and a step that answered is never lost to a killed process.
- A power cut may take the last commits with it; both databases recover a prefix of
  the commits. Cutting the database back to an earlier commit (as such a cut leaves
  it) gives a model whose weights, cart and private objects agree with each other.
- Only steps commit lazily; every other write, and every release, waits for the disk.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, DS_PASSWORD
from tests.nodes import RunningNode, fresh_postgres_url, node_process, running_node
from tests.server.rows import upload_rows
from veil import nn
from veil.server.db.engine import Database
from veil.server.db.tables.models import ModelRow
from veil.server.services import ledger
from veil.server.services.checkpoints import load_trainer

_ROWS = 64


def _mlp() -> nn.Model:
    model = nn.Model()
    model.add(nn.Dense(4, activation="relu", input_shape=(None, 6)))
    model.add(nn.Dense(1, activation="sigmoid"))
    return model


def _login(url: str, email: str, password: str) -> veil.Client:
    return veil.login(email=email, password=password, url=url, verbose=False)


def _batch(client: veil.Client, start: int) -> tuple[veil.AssetPointer, veil.AssetPointer]:
    data = client.datasets["Rows"]
    return data["x"][start : start + 8], data["y"][start : start + 8]


@contextlib.contextmanager
def _database(backend: str) -> Iterator[str | None]:
    if backend == "postgres":
        with fresh_postgres_url() as url:
            yield url
    else:
        yield None


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_node_killed_inside_a_step_keeps_all_of_it_or_none(tmp_path, backend) -> None:
    data_dir = tmp_path / "node"
    with _database(backend) as database_url:
        # Killed after computing, before the commit: nothing of the step is kept.
        with node_process(data_dir, database_url, "step.before_commit") as url:
            admin = _login(url, ADMIN_EMAIL, ADMIN_PASSWORD)
            upload_rows(admin, _ROWS)
            user = admin.users.create(email="kill@lab.org", password=DS_PASSWORD, budget=1e6)
            ds = _login(url, user.email, DS_PASSWORD)
            model_id = _mlp().compile(to=ds).id
            before = ds.models.get(model_id).weights().publish().get()
            with pytest.raises(veil.TransportError):
                ds.models.get(model_id).step(*_batch(ds, 0))

        # Killed right after the commit, before answering: the step stands, counted.
        with node_process(data_dir, database_url, "step.after_commit") as url:
            ds = _login(url, user.email, DS_PASSWORD)
            model_ptr = ds.models.get(model_id)
            assert model_ptr._info["steps"] == 0 and model_ptr.progress()["cart"] == 0.0
            with pytest.raises(veil.TransportError):
                model_ptr.step(*_batch(ds, 0))

        with node_process(data_dir, database_url, None) as url:
            ds = _login(url, user.email, DS_PASSWORD)
            model_ptr = ds.models.get(model_id)
            cart = model_ptr.progress()["cart"]
            assert model_ptr._info["steps"] == 1 and cart > 0.0
            published = model_ptr.weights().publish()
            assert published.cost == pytest.approx(cart)
            after = published.get()
            assert any((after[name] != before[name]).any() for name in before)


def _weights(node: RunningNode, model_id: str) -> dict[str, np.ndarray]:
    with node.ctx.db.session() as session:
        row = session.get(ModelRow, model_id)
        return load_trainer(session, node.ctx.files, row).get_weights()


def _copy_database(source: Path, target: Path) -> None:
    """The SQLite database's files (main file and WAL) as they are now."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("veil.db", "veil.db-wal"):
        (target / name).unlink(missing_ok=True)
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    (target / "veil.db-shm").unlink(missing_ok=True)


def test_a_power_cut_loses_the_last_steps_whole(tmp_path) -> None:
    data_dir, disk = tmp_path / "node", tmp_path / "disk"
    with running_node(data_dir) as node:
        admin = _login(node.url, ADMIN_EMAIL, ADMIN_PASSWORD)
        upload_rows(admin, _ROWS)
        user = admin.users.create(email="cut@lab.org", password=DS_PASSWORD, budget=1e6)
        ds = _login(node.url, user.email, DS_PASSWORD)
        model_ptr = _mlp().compile(to=ds)
        kept = [model_ptr.step(*_batch(ds, start))[0] for start in (0, 8)]
        cart, weights = model_ptr.progress()["cart"], _weights(node, model_ptr.id)
        # What the disk holds if the power goes now and the commits after this are lost.
        _copy_database(data_dir, disk)
        lost = [model_ptr.step(*_batch(ds, start))[0] for start in (16, 0)]
        assert model_ptr.progress()["cart"] > cart  # rows 0-7 were in two steps
        assert model_ptr.refresh()._info["steps"] == 4

    _copy_database(disk, data_dir)  # the cut: the last two steps' commits never landed
    with running_node(data_dir) as node:
        ds = _login(node.url, user.email, DS_PASSWORD)
        model_ptr = ds.models.get(model_ptr.id)
        assert model_ptr._info["steps"] == 2
        assert model_ptr.progress()["cart"] == pytest.approx(cart)
        now = _weights(node, model_ptr.id)
        for name, value in weights.items():
            np.testing.assert_array_equal(now[name], value)  # the weights the cart counts
        for loss in lost:
            with pytest.raises(veil.NotFound):
                veil.PrivatePointer(ds._http, loss.id, loss.kind, loss.shape).publish(sigma=10.0)
        for loss in kept:
            veil.PrivatePointer(ds._http, loss.id, loss.kind, loss.shape).publish(sigma=10.0)
        model_ptr.step(*_batch(ds, 16))
        assert model_ptr.refresh()._info["steps"] == 3


def _settings(session, backend: str) -> str:  # noqa: ANN001
    if backend == "sqlite":
        return {1: "lazy", 2: "durable"}[session.execute(text("PRAGMA synchronous")).scalar()]
    value = session.execute(text("SHOW synchronous_commit")).scalar()
    return {"off": "lazy", "on": "durable"}[value]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_only_a_lazy_write_session_commits_without_waiting_for_the_disk(tmp_path, backend) -> None:
    with _database(backend) as url:
        db = Database(url or f"sqlite:///{tmp_path / 'veil.db'}")
        db.migrate()
        try:
            # The same pooled connection serves all three: the setting follows each one.
            for durable in (True, False, True, False, True):
                with db.write_session(durable=durable) as session:
                    assert _settings(session, backend) == ("durable" if durable else "lazy")
                    session.commit()
            with db.write_session(durable=False) as session, pytest.raises(RuntimeError):
                ledger._check_write_session(session)  # a release never commits lazily
        finally:
            db.dispose()
