"""The migrations build exactly the schema the tables declare, on SQLite and PostgreSQL,
the newest ones (since 0005, job leases and node limits) can be undone and redone, and
0011 counts each user's private objects already stored into its quota totals."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import text

from tests.nodes import fresh_postgres_url
from veil.server.db import tables  # noqa: F401 - registers every table
from veil.server.db.base import Base
from veil.server.db.engine import _MIGRATIONS, Database


@contextlib.contextmanager
def _database(backend: str, tmp_path) -> Iterator[tuple[Database, Config]]:
    """An empty database of `backend` and the Alembic config of the node's migrations."""
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'veil.db'}"
        else:
            url = stack.enter_context(fresh_postgres_url())
        db = Database(url)
        stack.callback(db.dispose)
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        yield db, config


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_migrations_match_the_tables_and_the_newest_reverts(backend: str, tmp_path) -> None:
    with _database(backend, tmp_path) as (db, config):
        db.migrate()
        with db.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0004")
            command.upgrade(config, "head")
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_0011_counts_the_objects_stored_before_it(backend: str, tmp_path) -> None:
    with _database(backend, tmp_path) as (db, config):
        blob = b"\x00" * 100
        with db.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0010")
            conn.execute(
                text(
                    "INSERT INTO users (id, email, name, role, password_hash, budget, disabled, "
                    "default_password, created_at) VALUES ('u', 'u@x.org', 'U', "
                    "'data_scientist', 'x', 1.0, false, false, CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO models (id, owner_id, spec, version, cart_state, cart_curve, "
                    "charged_curve, steps, created_at, updated_at) VALUES ('m', 'u', '{}', 0, "
                    "'{}', '[]', '[]', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
            for number, data in enumerate([blob, blob[:40], None]):
                conn.execute(
                    text(
                        "INSERT INTO private_objects (id, owner_id, model_id, kind, shape, "
                        "source, n_rows, path, data, created_at) VALUES (:id, 'u', 'm', "
                        "'loss', '[]', 's', 1, :path, :data, CURRENT_TIMESTAMP)"
                    ),
                    {"id": f"o{number}", "path": None if data else "old.npz", "data": data},
                )
            command.upgrade(config, "head")
            usage = conn.execute(text("SELECT user_id, objects, object_bytes FROM user_usage"))
            assert usage.all() == [("u", 3, 140)]
