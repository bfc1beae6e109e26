"""What the benchmarks that run a node in processes of its own share."""

from __future__ import annotations

import socket
import subprocess
import time

import veil

__all__ = ["ADMIN", "free_port", "login_when_up"]

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
