"""The owner's command line against a running node."""

from __future__ import annotations

import numpy as np
import pytest

from veil.cli import main


@pytest.fixture
def cli(sqlite_node, monkeypatch):
    monkeypatch.setenv("VEIL_URL", sqlite_node.url)
    monkeypatch.setenv("VEIL_PASSWORD", "changethis")

    def run(*argv: str) -> int:
        return main(["--url", sqlite_node.url, *argv])

    return run


def test_users_datasets_and_ledger_commands(cli, capsys, tmp_path) -> None:
    assert cli("users", "create", "ds@lab.org", "--password", "ds-password-1", "--budget", "2") == 0
    assert "ds@lab.org" in capsys.readouterr().out
    assert cli("users", "set-budget", "ds@lab.org", "3.5") == 0
    assert cli("users", "list") == 0
    assert "3.5" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", np.arange(20, dtype=np.float32).reshape(10, 2))
    np.save(tmp_path / "y.npy", np.zeros(10, dtype=np.int64))
    assert (
        cli(
            "datasets",
            "upload",
            "Tiny",
            "--description",
            "t",
            "--asset",
            f"x={tmp_path / 'x.npy'}",
            "--asset",
            f"y={tmp_path / 'y.npy'}",
            "--bounds",
            "x=0,20",
            "--bounds",
            "y=0,1",
        )
        == 0
    )
    assert cli("datasets", "list") == 0
    assert "Tiny" in capsys.readouterr().out
    assert cli("ledger") == 0
    assert "ds@lab.org" in capsys.readouterr().out
    assert cli("users", "disable", "ds@lab.org") == 0
    assert cli("datasets", "delete", "Tiny") == 0


def test_errors_are_reported_not_raised(cli, capsys) -> None:
    assert cli("users", "set-budget", "nobody@lab.org", "1") == 1
    assert "NotFound" in capsys.readouterr().err
    assert cli("users", "create", "x@lab.org", "--password", "short", "--budget", "1") == 1
    assert "ValidationError" in capsys.readouterr().err


def test_admin_passwd_changes_the_password(cli, monkeypatch, capsys) -> None:
    monkeypatch.setenv("VEIL_NEW_PASSWORD", "brand-new-password")
    assert cli("admin", "passwd") == 0
    monkeypatch.setenv("VEIL_PASSWORD", "brand-new-password")
    assert cli("users", "list") == 0
