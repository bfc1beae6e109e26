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
