"""Alembic environment: runs on the connection the node hands in (see Database.migrate)."""

from alembic import context

from veil.server.db import tables  # noqa: F401 - registers every table on Base.metadata
from veil.server.db.base import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
