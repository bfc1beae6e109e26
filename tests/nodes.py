"""Start real nodes for tests: a uvicorn server on a free port, on SQLite or PostgreSQL.

Each node gets a fresh data directory and, on PostgreSQL, a fresh database of its own,
so tests never share state and can run side by side.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import uvicorn

from veil.server.app import create_app
from veil.server.serving import uvicorn_options
from veil.server.settings import Settings

__all__ = [
    "PG_ADMIN_URL",
    "RunningNode",
    "fresh_postgres_url",
    "free_port",
    "node_process",
    "running_node",
]

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def fresh_postgres_url() -> Iterator[str]:
    name = f"veil_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class RunningNode:
    url: str
    port: int
    settings: Settings
    server: uvicorn.Server

    @property
    def ctx(self):  # noqa: ANN201 - the NodeContext, for white-box checks in tests
        return self.server.config.app.state.node


@contextlib.contextmanager
def running_node(
    data_dir: Path, backend: str = "sqlite", **overrides: object
) -> Iterator[RunningNode]:
    with contextlib.ExitStack() as stack:
        database_url = overrides.pop("database_url", None)
        if backend == "postgres" and database_url is None:
            database_url = stack.enter_context(fresh_postgres_url())
        port = free_port()
        settings = Settings(data_dir=data_dir, database_url=database_url, port=port, **overrides)
        app = create_app(settings)
        options = {**uvicorn_options(settings), "host": "127.0.0.1", "log_level": "warning"}
        config = uvicorn.Config(app, **options)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test node did not start")
            time.sleep(0.01)
        try:
            yield RunningNode(
                url=f"http://127.0.0.1:{port}", port=port, settings=settings, server=server
            )
        finally:
            server.should_exit = True
            thread.join(timeout=20)


# Node processes fork from a server that imported the node once, so each (re)start
# takes a moment instead of the seconds the imports take.
_PROCESSES = multiprocessing.get_context("forkserver")
_PROCESSES.set_forkserver_preload(["veil.server.app"])


def _serve(port: int, env: dict[str, str]) -> None:
    """The launcher: a node configured by `VEIL_*` variables only, as `veil serve` does."""
    for key in [k for k in os.environ if k.startswith("VEIL_")]:
        del os.environ[key]
    os.environ.update(env)
    uvicorn.run(
        "veil.server.app:create_app", factory=True, host="127.0.0.1", port=port, log_level="warning"
    )


@contextlib.contextmanager
def node_process(data_dir: Path, database_url: str | None, failpoint: str | None) -> Iterator[str]:
    """A node in a process of its own (so that a failpoint may kill it): its URL."""
    port = free_port()
    env = {"VEIL_DATA_DIR": str(data_dir)}
    if database_url:
        env["VEIL_DATABASE_URL"] = database_url
    if failpoint:
        env["VEIL_FAILPOINT"] = failpoint
    process = _PROCESSES.Process(target=_serve, args=(port, env), daemon=True)
    process.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/api/v1/node", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if not process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"node process did not start (exit code {process.exitcode})")
            time.sleep(0.05)
        yield url
    finally:
        if process.is_alive():
            process.terminate()
        process.join(timeout=30)
