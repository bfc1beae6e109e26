"""What the benchmarks that run a node in processes of its own share."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

import veil
from veil.server.app import create_app
from veil.server.context import NodeContext
from veil.server.settings import Settings

__all__ = [
    "ADMIN",
    "free_port",
    "login_when_up",
    "node_env",
    "node_in_thread",
    "proc_status",
    "start_node",
    "stop_node",
]

ADMIN = ("admin@veil.dev", "changethis")
START_TIMEOUT_S = 120.0


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


def node_env() -> dict[str, str]:
    """This environment without VEIL_* (database, password...): only a run's own settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}


def proc_status(pid: int, field: str) -> int:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM, RssAnon...), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def start_node(
    data_dir: Path, port: int, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m veil.cli serve` in a process of its own (SQLite in `data_dir`, the
    default admin, output to `log`), once it answers on `port`."""
    with open(log, "wb") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "veil.cli", "serve", "--port", str(port)]
            + ["--data-dir", str(data_dir)],
            env=(env or node_env()) | {"VEIL_LOG_LEVEL": "warning"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if node.poll() is not None:
            raise RuntimeError(f"the node exited with {node.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/node", timeout=2):
                return node
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            stop_node(node)
            raise RuntimeError(
                f"the node did not answer in {START_TIMEOUT_S} s:\n{log.read_text()}"
            )
        time.sleep(0.2)


def stop_node(node: subprocess.Popen[bytes]) -> None:
    """Stop a `start_node` process as Ctrl-C would, killing it if it lingers."""
    if node.poll() is not None:
        return
    node.send_signal(signal.SIGINT)
    try:
        node.wait(timeout=30)
    except subprocess.TimeoutExpired:
        node.kill()
        node.wait()
