"""The README's data scientist session, run as written against a node with the demo data,
so that the walk-through cannot drift from what Veil does."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np

import veil
from veil.server.demo import ensure_demo_datasets

ROOT = Path(__file__).parents[1]
SESSION = ("## A data scientist's session", "## Privacy")


def _blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    start, end = (text.index(heading) for heading in SESSION)
    return re.findall(rf"```{language}\n(.*?)```", text[start:end], flags=re.S)


def test_the_readme_session_runs_as_written(sqlite_node, monkeypatch) -> None:
    ensure_demo_datasets(sqlite_node.ctx)
    # The shell block creates the account with the veil command, as the README says;
    # VEIL_URL points it at this node instead of the README's localhost:8081.
    (shell,) = _blocks("bash")
    env = {**os.environ, "VEIL_URL": sqlite_node.url}
    subprocess.run(["bash", "-c", shell], cwd=ROOT, env=env, check=True, timeout=120)
    login = veil.login
    monkeypatch.setattr(veil, "login", lambda *a, **kw: login(*a, **{**kw, "url": sqlite_node.url}))
    session: dict[str, object] = {}
    for number, code in enumerate(_blocks("python")):
        exec(compile(code, f"README.md python block {number}", "exec"), session)  # noqa: S102
    assert session["accuracy"] > 0.9
    budget = session["client"].privacy_budget
    assert 0 < budget.spent <= budget.total
    assert np.isfinite(session["preds"]).all()
