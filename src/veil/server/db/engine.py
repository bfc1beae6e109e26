"""Database engine and sessions: SQLite (WAL) by default, PostgreSQL at scale.

Built by the app factory, never at import time.

Durability. A write session's commit is on disk before `commit()` returns (SQLite
`synchronous=FULL`, PostgreSQL's default `synchronous_commit=on`): a release, its charge
and everything the node answers after a write survive a power cut. One kind of write
opts out, `write_session(durable=False)`, for flow III steps: its commit is atomic and
ordered like any other but may reach the disk a moment after it returns (SQLite
`synchronous=NORMAL`, PostgreSQL `synchronous_commit=off`). What that may lose, and why
no privacy or accounting property depends on it, is in `services.steps`. Both
databases recover a prefix of the committed transactions, so a durable commit also
makes durable every commit before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database"]

_MIGRATIONS = Path(__file__).with_name("migrations")


class Database:
    """One engine and its session factory; `write_session()` locks for a ledger write."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine: Engine = self._make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if self.is_sqlite:
            # Ledger writes take SQLite's write lock at BEGIN, so two publishes never
            # both read the old balance (PostgreSQL uses SELECT ... FOR UPDATE instead).
            self._immediate = sessionmaker(
                self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
            )
            self._lazy = sessionmaker(
                self.engine.execution_options(sqlite_begin="IMMEDIATE", sqlite_durable=False),
                expire_on_commit=False,
            )
        else:
            self._immediate = self._lazy = self._sessions

    def _make_engine(self, url: str) -> Engine:
        if not self.is_sqlite:
            return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
            options = conn.get_execution_options()
            begin = options.get("sqlite_begin", "DEFERRED")
            # Set per write transaction (outside it, as SQLite requires), only when it
            # changes: a read commits nothing, so it keeps whatever the last write set.
            synchronous = "FULL" if options.get("sqlite_durable", True) else "NORMAL"
            info = conn.connection.info
            if begin == "IMMEDIATE" and info.get("synchronous", "FULL") != synchronous:
                conn.exec_driver_sql(f"PRAGMA synchronous={synchronous}")
                info["synchronous"] = synchronous
            conn.exec_driver_sql(f"BEGIN {begin}")

        return engine

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def write_session(self, *, durable: bool = True) -> Iterator[Session]:
        """A session whose transaction holds the write lock from its first statement.

        `durable=False`: its commit may reach the disk after it returns (see above);
        only for writes whose loss in a power cut breaks no promise (`services.steps`).
        """
        with (self._immediate if durable else self._lazy)() as session:
            session.info["durable"] = durable  # `ledger.charge` refuses a lazy one
            if not durable and not self.is_sqlite:
                session.execute(text("SET LOCAL synchronous_commit TO OFF"))
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
