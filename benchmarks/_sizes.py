"""The flags every benchmark takes, so that `run.py` and the tests drive them alike."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["latency_summary", "machine", "size_flags"]


def size_flags(parser: argparse.ArgumentParser, results: Path, *, quick: str, tiny: str) -> None:
    """`--quick` (under two minutes), `--tiny` (a smoke run for the tests) and `--out`
    (where the JSON goes, `results` by default); `quick` and `tiny` say what they run."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--tiny", action="store_true", help=tiny)
    parser.add_argument("--out", type=Path, default=results, help="where the JSON goes")


def _cpu_model() -> str:
    """The CPU's model name (`platform.processor()` is empty on Linux): figures taken on
    different CPUs are not compared."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine and its load, recorded beside every figure."""
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
    }


def latency_summary(times_ms: list[float]) -> dict[str, float]:
    """The median and 95th percentile of some timings in milliseconds, and their count."""
    return {
        "p50_ms": float(np.percentile(times_ms, 50)),
        "p95_ms": float(np.percentile(times_ms, 95)),
        "n": len(times_ms),
    }
