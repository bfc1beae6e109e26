"""Run every benchmark: one command, each script at `--quick` (or `--tiny` with --tiny).

Each script prints its table (shown as it runs) and writes its JSON; this collects them
all into one file (by default ``benchmarks/results/all.json``), with the machine and
load, and says which scripts failed, do not exist yet, or were skipped because an
optional package is missing (Locust for `load.py`: `bash scripts/setup bench`).

    python benchmarks/run.py [--quick | --tiny] [--only NAME ...] [--out PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _sizes import machine

HERE = Path(__file__).resolve().parent
SCRIPTS = (
    "training.py",
    "step_latency.py",
    "publish_latency.py",
    "upload_memory.py",
    "epoch_memory.py",
    "subject_level.py",
    "accuracy.py",
    "per_sample_grads.py",
    "profile_step.py",
    "secure_noise.py",
    "cart_ops.py",
    "privacy_audit.py",
    "login_under_load.py",
    "load.py",
)
# Scripts that need a package the test setup does not install: (module, how to get it).
NEEDS = {"load.py": ("locust", "bash scripts/setup bench")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="each at --quick (the default)")
    size.add_argument("--tiny", action="store_true", help="each at --tiny: a smoke run")
    parser.add_argument("--only", nargs="+", default=None, help="these scripts only")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "all.json")
    args = parser.parse_args()
    size = "--tiny" if args.tiny else "--quick"
    results: dict[str, object] = {}
    outcome: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for script in args.only or SCRIPTS:
            path = HERE / script
            if not path.exists():
                print(f"== {script}: not written yet, skipped", flush=True)
                outcome[script] = "missing"
                continue
            module, install = NEEDS.get(script, (None, ""))
            if module is not None and importlib.util.find_spec(module) is None:
                print(f"== {script}: skipped, needs {module} ({install})", flush=True)
                outcome[script] = f"skipped: needs {module} ({install})"
                continue
            out = Path(tmp) / f"{path.stem}.json"
            print(f"== {script} {size}", flush=True)
            start = time.monotonic()
            done = subprocess.run([sys.executable, str(path), size, "--out", str(out)], check=False)
            took = time.monotonic() - start
            ok = done.returncode == 0 and out.exists()
            outcome[script] = f"ok in {took:.0f} s" if ok else f"failed ({done.returncode})"
            if ok:
                results[path.stem] = json.loads(out.read_text())
    print("== summary")
    for script, said in outcome.items():
        print(f"{script:<24} {said}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"size": size, "machine": machine(), "outcome": outcome, "results": results}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    if any(said.startswith("failed") for said in outcome.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
