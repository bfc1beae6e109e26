"""Cart operations: what a step, a fit, a publish and a quote cost in time.

Times each cart operation on one dataset of `--rows` rows after a long history of
steps, prints a table and writes ``benchmarks/results/cart_ops.json``. The point is
the shape: `add_gaussian_rows` follows the batch, `curve()` (a publish) follows
neither the number of steps nor the number of rows.

    python benchmarks/cart_ops.py [--rows 1000000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _sizes import machine, size_flags

from veil.privacy import Cart, calibrate_fit, quote_fit

RESULTS = Path(__file__).resolve().parent / "results" / "cart_ops.json"
DELTA = 1e-5


def _time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--history", type=int, default=2_000, help="steps run before timing")
    size_flags(
        parser,
        RESULTS,
        quick="rows 100,000, 5 repeats, 200 steps of history",
        tiny="1,000 rows, 2 repeats",
    )
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.repeats, args.history = 1_000, 2, 10
    elif args.quick:
        args.rows, args.repeats, args.history = 100_000, 5, 200

    n = args.rows
    rng = np.random.default_rng(0)
    train, val = np.arange(0, n * 9 // 10), np.arange(n * 9 // 10, n)
    cart = Cart()
    cart.ensure_source("d", n)
    cart.mark_pool("d", train)
    cart.add_sampled("d", q=256 / train.size, sigma=1.0, steps=1_000)
    for _ in range(args.history):
        cart.add_gaussian_rows("d", rng.integers(0, n, 256), sigma=1.0)
    batch = rng.integers(0, n, 256)
    plan = {
        "n_rows_train": train.size,
        "train_rows": train,
        "val_rows": val,
        "batch_size": 256,
        "epochs": 5,
        "delta": DELTA,
    }
    fast, slow = args.repeats, max(1, args.repeats // 10)
    cases: list[tuple[str, Callable[[], object], int]] = [
        (
            "add_gaussian_rows (batch 256)",
            lambda: cart.add_gaussian_rows("d", batch, sigma=1.0),
            fast,
        ),
        (
            "add_sampled (one fit)",
            lambda: cart.add_sampled("d", q=0.01, sigma=1.0, steps=500),
            fast,
        ),
        ("curve() (publish)", cart.curve, fast),
        ("epsilon(delta)", lambda: cart.epsilon(DELTA), fast),
        ("state_dict()", cart.state_dict, fast),
        ("Cart.curve_from_state", lambda: Cart.curve_from_state(cart.state_dict()), fast),
        ("mark_pool (per fit)", lambda: cart.mark_pool("d", train), slow),
        ("quote_fit", lambda: quote_fit(cart, "d", sigma=1.0, **plan), slow),
        ("calibrate_fit", lambda: calibrate_fit(cart, "d", target_epsilon=2.0, **plan), slow),
    ]
    rows = [(name, _time(fn, repeats)) for name, fn, repeats in cases]

    print(f"cart operations, {n} rows, after {args.history} steps")
    print(f"{'operation':<32}{'median ms':>12}")
    for name, seconds in rows:
        print(f"{name:<32}{seconds * 1e3:>12.3f}")
    meta = {"rows": n, "history_steps": args.history, "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "meta": meta,
        "machine": machine(),
        "rows": [{"operation": k, "median_s": v} for k, v in rows],
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
