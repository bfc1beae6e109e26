"""`benchmarks/training.py --tiny` runs every system on every model and writes its JSON
(no time is asserted: the numbers depend on the machine)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "training.py"


def test_training_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "training.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    report = json.loads(out.read_text())
    assert [row["model"] for row in report["results"]] == ["idc_cnn", "mlp", "cnn32"]
    for row in report["results"]:
        rates = row["examples_per_second"]
        assert set(rates) == set(report["systems"])
        assert all(rate > 0 for rate in rates.values())
        assert row["engine_over_opacus"] > 0 and row["http_over_torch"] > 0
    machine = report["machine"]
    assert machine["cpus"] >= 1 and len(machine["loadavg"]) == 4 and machine["cpu"]
    assert report["sigma"] == 1.0 and report["clip"] == 1.0
