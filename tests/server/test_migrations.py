"""The migrations build exactly the schema the tables declare, on SQLite and PostgreSQL,
and the newest one (0005, job leases and node limits) can be undone and redone."""

from __future__ import annotations

import contextlib

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from tests.nodes import fresh_postgres_url
from veil.server.db import tables  # noqa: F401 - registers every table
from veil.server.db.base import Base
from veil.server.db.engine import _MIGRATIONS, Database


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_migrations_match_the_tables_and_the_newest_reverts(backend: str, tmp_path) -> None:
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'veil.db'}"
        else:
            url = stack.enter_context(fresh_postgres_url())
        db = Database(url)
        stack.callback(db.dispose)
        db.migrate()
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with db.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0004")
            command.upgrade(config, "head")
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
