"""The example script runs all three flows against a node holding the demo data."""

from __future__ import annotations

import runpy
from pathlib import Path

from veil.server.demo import ensure_demo_datasets

EXAMPLE = Path(__file__).parents[1] / "examples" / "user_flows.py"


def test_user_flows_example_runs_against_a_demo_node(sqlite_node, capsys) -> None:
    ensure_demo_datasets(sqlite_node.ctx)
    example = runpy.run_path(str(EXAMPLE))
    example["main"](["--url", sqlite_node.url])
    out = capsys.readouterr().out
    assert "Flow I: published" in out and "Flow III:" in out
    accuracy = float(out.split("accuracy on the public test split: ")[1].split()[0])
    assert accuracy >= 0.9


def test_the_example_says_plainly_when_its_budget_is_spent(sqlite_node) -> None:
    import pytest

    import veil

    ensure_demo_datasets(sqlite_node.ctx)
    example = runpy.run_path(str(EXAMPLE))
    admin = veil.login("admin@veil.dev", "changethis", url=sqlite_node.url, verbose=False)
    admin.users.create(email=example["DS_EMAIL"], password=example["DS_PASSWORD"], budget=0.05)
    with pytest.raises(SystemExit) as exited:
        example["main"](["--url", sqlite_node.url])
    message = str(exited.value.code)
    assert "budget" in message and f"veil users set-budget {example['DS_EMAIL']}" in message
