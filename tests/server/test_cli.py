"""The owner's command line against a running node."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

import veil
from veil.cli import _parser, main
from veil.server.settings import Settings


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


def test_only_the_admin_is_warned_about_the_default_password(cli, sqlite_node, capsys) -> None:
    assert cli("users", "create", "ds@lab.org", "--password", "ds-password-1", "--budget", "2") == 0
    assert "warning: Anyone can login as an admin" in capsys.readouterr().err
    ds = veil.login("ds@lab.org", "ds-password-1", url=sqlite_node.url)
    assert ds.warnings == [] and "Anyone can login" not in capsys.readouterr().out
    admin = veil.login("admin@veil.dev", "changethis", url=sqlite_node.url, verbose=False)
    assert len(admin.warnings) == 1 and "default" in admin.warnings[0]
    admin.change_password(old_password="changethis", new_password="a-better-password")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VEIL_PASSWORD", "a-better-password")
        assert cli("users", "list") == 0
    assert capsys.readouterr().err == ""


def test_without_a_password_or_a_terminal_the_cli_says_so_in_one_line(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    for argv in (["users", "list"], ["admin", "passwd"]):
        done = subprocess.run(
            [sys.executable, "-m", "veil.cli", "--url", "http://127.0.0.1:9", *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            "error: VEIL_PASSWORD is not set and there is no terminal to ask: set VEIL_PASSWORD."
        ]


def _actions(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from ((f"{name} {n}", a) for n, a in _actions(child))
        else:
            yield parser.prog, action


def test_every_option_is_documented_and_serve_lists_every_variable(capsys) -> None:
    undocumented = [
        (where, action.dest) for where, action in _actions(_parser()) if not action.help
    ]
    assert undocumented == []
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in Settings.model_fields:
        assert f"VEIL_{name.upper()}" in text
    assert "--port PORT port to listen on [env VEIL_PORT; default: 8081]" in text
    assert "VEIL_ADMIN_PASSWORD the admin's password at first start" in text
