"""What the benchmarks that run a node in processes of its own share."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

import veil
from veil.server.app import create_app
from veil.server.context import NodeContext
from veil.server.settings import Settings

__all__ = ["ADMIN", "free_port", "login_when_up", "node_in_thread"]

ADMIN = ("admin@veil.dev", "changethis")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def login_when_up(node: subprocess.Popen, port: int, timeout: float = 180.0) -> veil.Client:
    """The admin's client once `veil serve` (process `node`) answers on `port`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return veil.login(*ADMIN, port=port, verbose=False)
        except veil.TransportError:
            if time.monotonic() > deadline or node.poll() is not None:
                raise RuntimeError("the node did not start") from None
            time.sleep(0.5)


@contextmanager
def node_in_thread(data_dir: Path) -> Iterator[tuple[str, NodeContext]]:
    """A loopback node on SQLite served by uvicorn in a thread of this process:
    (its URL, its context), for benchmarks that also look inside the node."""
    port = free_port()
    app = create_app(Settings(data_dir=data_dir, port=port, log_level="warning"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("benchmark node did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app.state.node
    finally:
        server.should_exit = True
        thread.join(timeout=20)
