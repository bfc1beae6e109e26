"""`veil serve --demo`, as the quickstart runs it: a real process, real HTTP."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import httpx

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
        # No proxy is trusted by default: a forged X-Forwarded-For from this machine
        # changes nothing about who asks, and a relayed request is not a local one.
        forged = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/auth/login",
            json={"email": "admin@veil.dev", "password": "changethis"},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
        assert forged.status_code == 403, forged.text
        assert forged.json()["detail"]["client_host"] == "127.0.0.1"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_node_warns_at_start_about_the_default_password(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="veil.node"):
        create_app(Settings(data_dir=tmp_path / "n"))
    assert "Anyone can login as an admin" in caplog.text


def test_the_node_and_the_threads_it_starts_flush_denormal_floats(tmp_path) -> None:
    """A private value that makes a subnormal float must not take longer to train on."""
    import threading

    import torch

    seen: dict[str, bool] = {}

    def flushes() -> bool:
        return bool((torch.tensor([1e-39], dtype=torch.float32) * 1.0 == 0).item())

    def node_thread() -> None:
        seen["before"] = flushes()
        create_app(Settings(data_dir=tmp_path / "n"))
        seen["node"] = flushes()
        child = threading.Thread(target=lambda: seen.update(child=flushes()))
        child.start()
        child.join()
        torch.set_flush_denormal(False)

    thread = threading.Thread(target=node_thread)
    thread.start()
    thread.join()
    assert seen == {"before": False, "node": True, "child": True}


def test_trusted_proxies_are_explicit_addresses(tmp_path) -> None:
    import pytest
    from pydantic import ValidationError

    from veil.server.serving import uvicorn_options

    default = uvicorn_options(Settings(data_dir=tmp_path))
    assert default["proxy_headers"] is False and default["forwarded_allow_ips"] == ""
    behind = uvicorn_options(
        Settings(data_dir=tmp_path, forwarded_allow_ips="10.0.0.5, 192.168.1.0/24")
    )
    assert behind["proxy_headers"] is True
    assert behind["forwarded_allow_ips"] == "10.0.0.5,192.168.1.0/24"
    with pytest.raises(ValidationError, match="forwarded_allow_ips"):
        Settings(data_dir=tmp_path, forwarded_allow_ips="proxy.example")


def test_a_node_refuses_a_device_it_cannot_train_on(tmp_path) -> None:
    import pytest
    import torch
    from pydantic import ValidationError

    assert Settings(data_dir=tmp_path, device="cpu").device == "cpu"
    for bad in ("tpu", "gpu", "cuda:x"):
        with pytest.raises(ValidationError, match="device expects 'cpu', 'cuda'"):
            Settings(data_dir=tmp_path, device=bad)
    with pytest.raises(ValidationError, match="CUDA device"):
        Settings(data_dir=tmp_path, device=f"cuda:{torch.cuda.device_count()}")


def test_a_node_runs_each_torch_op_on_the_threads_it_is_given(tmp_path) -> None:
    import pytest
    import torch
    from pydantic import ValidationError

    from veil.server.context import NodeContext

    before = torch.get_num_threads()
    try:
        for threads in (2, 1):
            settings = Settings(data_dir=tmp_path / str(threads), torch_threads=threads)
            NodeContext.create(settings).stop()
            assert torch.get_num_threads() == threads
        assert Settings(data_dir=tmp_path).torch_threads == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValidationError, match="torch_threads"):
        Settings(data_dir=tmp_path, torch_threads=0)
