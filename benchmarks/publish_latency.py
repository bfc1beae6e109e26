"""Publish latency over HTTP: does publishing weights depend on how long training ran?

Starts a loopback node on SQLite (in-process uvicorn on a free port), gives it models
whose carts hold 10, 1,000, 100,000 and 1,000,000 Poisson-sampled steps on a dataset
of `--rows` rows (with per-row arrays, as a trained model has), and times
`weights_ptr.publish()` through the `veil` client:

- `first`: the first publish of fresh models, which charges the whole cart;
- `repeat`: later publishes of one model, which charge 0 but walk the same code
  (lock, read two curves, link the file, record the release, commit).

Sizes are interleaved round by round so drift hits them alike. Prints a table, writes
``benchmarks/results/publish_latency.json`` and says whether the p50s agree within 20%
and stay under 50 ms.

    python benchmarks/publish_latency.py [--repeats 300] [--fresh 100] [--rows 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _serve import ADMIN, node_in_thread
from _sizes import latency_summary, machine, size_flags
from safetensors.numpy import save_file

import veil
from veil.privacy import Cart, RdpCurve
from veil.server.db.engine import Database
from veil.server.db.tables.models import ModelRow
from veil.server.storage.files import NodeFiles, atomic_write

RESULTS = Path(__file__).resolve().parent / "results" / "publish_latency.json"
STEPS = (10, 1_000, 100_000, 1_000_000)
DS = ("bench@lab.org", "bench-password")
SOURCE = "bench-dataset"
BATCH = 100
SIGMA = 1.0
AGREE = 0.20
LIMIT_MS = 50.0


def _cart(steps: int, rows: int) -> Cart:
    """A cart as `steps` DP-SGD steps leave it, with per-row arrays for `rows` rows."""
    cart = Cart()
    cart.ensure_source(SOURCE, rows)
    cart.mark_pool(SOURCE, np.arange(rows * 9 // 10))
    cart.add_sampled(SOURCE, q=BATCH / rows, sigma=SIGMA, steps=steps)
    cart.add_gaussian_rows(SOURCE, np.arange(rows * 9 // 10, rows), sigma=4.0, count=2)
    return cart


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _add_model(db: Database, files: NodeFiles, *, owner_id: str, cart: Cart, steps: int) -> str:
    rng = np.random.default_rng(steps)
    weights = {
        "conv.weight": rng.normal(size=(16, 1, 3, 3)).astype(np.float32),
        "dense.weight": rng.normal(size=(10, 2704)).astype(np.float32),
        "dense.bias": np.zeros(10, dtype=np.float32),
    }
    with db.session() as session:
        model = ModelRow(
            owner_id=owner_id,
            spec={"layers": []},
            version=0,
            cart_state=dict(cart.state_dict()),
            cart_curve=cart.curve().to_list(),
            charged_curve=RdpCurve.zero().to_list(),
            steps=steps,
        )
        session.add(model)
        session.flush()
        atomic_write(files.weights(model.id, 0), lambda tmp: save_file(weights, str(tmp)))
        arrays = {f"{k}.{name}": a for k, v in cart.arrays().items() for name, a in v.items()}
        atomic_write(files.cart_arrays(model.id, 0), lambda tmp: _save_npz(tmp, arrays))
        session.commit()
        return model.id


def _publish_ms(client: veil.Client, model_id: str) -> float:
    start = time.perf_counter()
    veil.WeightsPointer(client._http, model_id).publish()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300, help="re-publishes per size")
    parser.add_argument("--fresh", type=int, default=100, help="first publishes per size")
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the dataset")
    parser.add_argument("--warmup", type=int, default=20)
    size_flags(
        parser,
        RESULTS,
        quick="100 repeats, 30 fresh models per size",
        tiny="3 repeats, 2 fresh models, 1,000 rows",
    )
    args = parser.parse_args()
    if args.tiny:
        args.repeats, args.fresh, args.rows, args.warmup = 3, 2, 1_000, 1
    elif args.quick:
        args.repeats, args.fresh = 100, 30

    with tempfile.TemporaryDirectory() as tmp, node_in_thread(Path(tmp) / "node") as (url, ctx):
        db, files = ctx.db, ctx.files
        admin = veil.login(*ADMIN, url=url, verbose=False)
        admin.users.create(email=DS[0], password=DS[1], budget=1e12)
        ds = veil.login(*DS, url=url, verbose=False)
        carts = {steps: _cart(steps, args.rows) for steps in STEPS}
        owner = ds.user.id
        repeat_model = {
            s: _add_model(db, files, owner_id=owner, cart=carts[s], steps=s) for s in STEPS
        }
        fresh_models = {
            s: [
                _add_model(db, files, owner_id=owner, cart=carts[s], steps=s)
                for _ in range(args.fresh)
            ]
            for s in STEPS
        }
        for _ in range(args.warmup):  # connections, caches, the first release file
            _publish_ms(ds, repeat_model[STEPS[0]])
        first: dict[int, list[float]] = {s: [] for s in STEPS}
        repeat: dict[int, list[float]] = {s: [] for s in STEPS}
        for i in range(max(args.repeats, args.fresh)):
            for s in STEPS:
                if i < args.fresh:
                    first[s].append(_publish_ms(ds, fresh_models[s][i]))
                if i < args.repeats:
                    repeat[s].append(_publish_ms(ds, repeat_model[s]))
        delta = ds.privacy_budget.delta

    rows = []
    for s in STEPS:
        rows.append(
            {
                "steps": s,
                "cart_epsilon": carts[s].epsilon(delta),
                "first": latency_summary(first[s]),
                "repeat": latency_summary(repeat[s]),
            }
        )
    print(f"publish latency over HTTP, loopback node on SQLite, dataset of {args.rows} rows")
    print(
        f"{'steps':>10} {'cart eps':>10} {'first p50':>10} {'first p95':>10} "
        f"{'repeat p50':>11} {'repeat p95':>11}"
    )
    for r in rows:
        print(
            f"{r['steps']:>10,} {r['cart_epsilon']:>10.4g} {r['first']['p50_ms']:>8.2f}ms "
            f"{r['first']['p95_ms']:>8.2f}ms {r['repeat']['p50_ms']:>9.2f}ms "
            f"{r['repeat']['p95_ms']:>9.2f}ms"
        )
    verdicts = {}
    for phase in ("first", "repeat"):
        p50s = [r[phase]["p50_ms"] for r in rows]
        spread = max(p50s) / min(p50s) - 1
        verdicts[phase] = {
            "spread": spread,
            "agree_within_20pct": spread <= AGREE,
            "all_under_50ms": max(p50s) < LIMIT_MS,
        }
        print(
            f"{phase:>6}: p50s agree within {AGREE:.0%}: "
            f"{'yes' if spread <= AGREE else 'NO'} (spread {spread:.1%}); "
            f"all under {LIMIT_MS:.0f} ms: {'yes' if max(p50s) < LIMIT_MS else 'NO'}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "publish_latency",
                "database": "sqlite",
                "rows": args.rows,
                "repeats": args.repeats,
                "fresh": args.fresh,
                "results": rows,
                "verdicts": verdicts,
                "machine": machine(),
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
