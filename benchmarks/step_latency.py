"""Flow III step latency over HTTP: what the node adds to the engine's own step.

Starts a loopback node on SQLite (in-process uvicorn on a free port), uploads a
tabular dataset, compiles a small MLP (30-64-64-1, sigmoid) and times, interleaved:

- `engine`: the engine's own `trainer.step` on 32 rows (in the node process, no HTTP);
- `step`: `model_ptr.step(x[a:a+32], y[a:a+32])` through the `veil` client, the slice
  named in the step request itself;
- `step+slices`: the same with server-side slices made first (`x[a:b].id`), as each
  step cost before a step could name its rows: two slice round trips plus the step;
- `request`: an authenticated request that does next to nothing (`users.me()`): what
  any request costs over HTTP, the floor under the overhead.

The node's overhead is `step - engine`. Prints a table and writes JSON (by default
``benchmarks/results/step_latency.json``).

Profile notes (timed spans in an in-thread node, 2 CPUs, medians, 4,096 rows): the
step request with its service replaced by a no-op (HTTP, FastAPI, body and answer,
the caller's token, the client) costs 1.08 ms; the service outside the engine 1.6 ms:
reading the model's version and the pair 0.5 (token, model, dataset and units: one
statement each), encoding the checkpoint 0.28 (safetensors of 26 arrays), the write
transaction 0.7 (UPDATE of the model with its cart curve, the state, the cart's
changed rows, pruning the state before last, both objects, commit), the rest 0.15.
Each SQL statement costs 0.01-0.05 ms in SQLite and as much again in SQLAlchemy.

    python benchmarks/step_latency.py [--quick | --tiny] [--steps 300] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _serve import ADMIN, node_in_thread
from _sizes import latency_summary, machine

import veil
from veil import nn
from veil.server.db.tables.accounts import UserRow
from veil.server.services.models import get_model

RESULTS = Path(__file__).resolve().parent / "results" / "step_latency.json"
DS = ("bench@lab.org", "bench-password")
BATCH = 32
TARGET_MS = 3.0


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps of each kind")
    parser.add_argument("--rows", type=int, default=4096, help="rows of the dataset")
    parser.add_argument("--quick", action="store_true", help="100 steps of each kind")
    parser.add_argument("--tiny", action="store_true", help="a few steps: a smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    steps = 5 if args.tiny else 100 if args.quick else args.steps
    warmup = 2 if args.tiny else 20

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, 30)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)[:, None]
    with tempfile.TemporaryDirectory() as tmp, node_in_thread(Path(tmp) / "node") as node:
        url, ctx = node
        admin = veil.login(*ADMIN, url=url, verbose=False)
        admin.users.create(email=DS[0], password=DS[1], budget=1e12)
        admin.datasets.upload(
            name="Bench", assets={"x": x, "y": y}, bounds={"x": (-10, 10), "y": (0, 1)}
        )
        ds = veil.login(*DS, url=url, verbose=False)
        data = ds.datasets["Bench"]
        model = nn.Model()
        model.add(nn.Dense(64, activation="relu", input_shape=(None, 30)))
        model.add(nn.Dense(64, activation="relu"))
        model.add(nn.Dense(1))
        model.add(nn.Sigmoid())
        model_ptr = model.compile(to=ds, loss=nn.BinaryCrossEntropy(), optimizer=nn.Adam())
        xs, ys = data["x"], data["y"]
        starts = [(i * BATCH) % (args.rows - BATCH) for i in range(warmup + steps)]

        def engine(a: int) -> float:
            with ctx.live.lock(ds_user.id, model_ptr.id):
                with ctx.db.session() as session:
                    row = get_model(session, user=ds_user, model_id=model_ptr.id)
                    trainer = ctx.live.get(session, row).trainer
                start = time.perf_counter()
                trainer.step(x[a : a + BATCH], y[a : a + BATCH])
                return _ms(start)

        def named(a: int) -> float:
            start = time.perf_counter()
            model_ptr.step(xs[a : a + BATCH], ys[a : a + BATCH])
            return _ms(start)

        def sliced(a: int) -> float:
            start = time.perf_counter()
            x_view, y_view = xs[a : a + BATCH], ys[a : a + BATCH]
            x_view.id, y_view.id  # noqa: B018 - a server-side view each, as before
            model_ptr.step(x_view, y_view)
            return _ms(start)

        def request(_: int) -> float:
            start = time.perf_counter()
            ds.users.me()
            return _ms(start)

        with ctx.db.session() as session:
            ds_user = session.get(UserRow, ds.user.id)
        kinds = {"engine": engine, "step": named, "step+slices": sliced, "request": request}
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for i, a in enumerate(starts):
            for kind, run in kinds.items():
                elapsed = run(a)
                if i >= warmup:
                    times[kind].append(elapsed)

    rows = {kind: latency_summary(t) for kind, t in times.items()}
    overhead = [s - e for s, e in zip(times["step"], times["engine"], strict=True)]
    rows["overhead"] = latency_summary(overhead)
    print(f"Flow III step latency, MLP 30-64-64-1, batch {BATCH}, loopback node on SQLite")
    print(f"{'':>12} {'p50':>9} {'p95':>9}")
    for kind, r in rows.items():
        print(f"{kind:>12} {r['p50_ms']:>7.2f}ms {r['p95_ms']:>7.2f}ms")
    met = rows["overhead"]["p50_ms"] <= TARGET_MS
    print(f"node overhead p50 <= {TARGET_MS:g} ms: {'yes' if met else 'NO'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "step_latency",
                "database": "sqlite",
                "batch": BATCH,
                "steps": steps,
                "results": rows,
                "overhead_target_met": met,
                "machine": machine(),
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
