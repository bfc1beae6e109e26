"""`veil serve --demo`, as the quickstart runs it: a real process, real HTTP."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import veil
from tests.nodes import free_port
from veil.server.app import create_app
from veil.server.settings import Settings


def test_veil_serve_with_demo_data(tmp_path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veil.cli",
            "serve",
            "--demo",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                client = veil.login("admin@veil.dev", "changethis", port=port, verbose=False)
                break
            except veil.TransportError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "the node did not start"
                time.sleep(0.3)
        names = [d.name for d in client.datasets]
        assert names == ["BreastCancerDataset", "BreastCancerWisconsin", "Digits"]
        images = client.datasets["BreastCancerDataset"]["train_images"]
        assert images.public_shape[1:] == (3, 50, 50) and images.dtype == "uint8"
        assert (tmp_path / "data" / "veil.db").exists()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_node_warns_at_start_about_the_default_password(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="veil.node"):
        create_app(Settings(data_dir=tmp_path / "n"))
    assert "Anyone can login as an admin" in caplog.text
