"""Each benchmark runs end to end at a tiny size (no time is asserted: figures are for
people to read, on the machine they ran on)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


RUNNABLE = [
    "subject_level.py",
    "accuracy.py",
    "step_latency.py",
    "publish_latency.py",
    "upload_memory.py",
    "epoch_memory.py",
    "cart_ops.py",
    "per_sample_grads.py",
    "secure_noise.py",
    "privacy_audit.py",
    "profile_step.py",
]


@pytest.mark.parametrize("script", RUNNABLE)
def test_the_benchmark_runs_and_writes_its_json(script: str, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert "machine" in result and result["machine"]["cpus"] >= 1
    assert result["machine"]["cpu"]  # figures from different CPUs are not compared


def test_the_runner_collects_results_and_skips_what_needs_a_missing_package(
    tmp_path: Path,
) -> None:
    """`benchmarks/run.py` gathers each script's JSON; a script whose optional package is
    not installed (Locust for load.py) is reported as skipped with how to install it,
    and does not fail the run."""
    if importlib.util.find_spec("locust") is not None:
        pytest.skip("Locust is installed here: load.py would run")
    out = tmp_path / "all.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tiny", "--out", str(out)]
        + ["--only", "load.py", "cart_ops.py"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert summary["outcome"]["load.py"] == "skipped: needs locust (bash scripts/setup bench)"
    assert summary["outcome"]["cart_ops.py"].startswith("ok in")
    assert "cart_ops" in summary["results"] and "load" not in summary["results"]
