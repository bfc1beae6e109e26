"""Login latency while the node trains: is a login ever queued behind someone's step?

Starts `veil serve --demo` in its own process (SQLite by default, or `--database-url`
for PostgreSQL; the embedded runner), then times logins of one account, first on an
idle node, then while `--steppers` data scientists each step a small CNN on 1,000 IDC
rows (`BreastCancerDataset`, 3 x 50 x 50) in a loop and `--fitters` others each run a
long `fit`. A login verifies an argon2 hash (CPU-bound, tens of milliseconds) and
writes a token; before issue 8 it waited for the database's write lock, which steps
held while they computed. The time of one argon2 verification in this process is
printed beside, since on a small machine it is most of a login. Prints a table and
writes ``benchmarks/results/login_under_load_<database>.json``.

    python benchmarks/login_under_load.py [--seconds 60] [--database-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from _serve import free_port, login_when_up
from _sizes import machine, size_flags

import veil
from veil import nn
from veil.server.services.passwords import hash_password, verify_password

RESULTS = Path(__file__).resolve().parent / "results" / "login_under_load.json"
PASSWORD = "bench-password"
ROWS = 1000  # an uncharged step on 1,000 IDC rows: the case issue 8 measured


def _cnn() -> nn.Model:
    model = nn.Model()
    model.add(nn.Rescaling(1 / 255, input_shape=(None, 3, 50, 50)))
    model.add(nn.Convolution(8, (3, 3)))
    model.add(nn.ReLU())
    model.add(nn.MaxPool((2, 2)))
    model.add(nn.Flatten())
    model.add(nn.Dense(1))
    model.add(nn.Sigmoid())
    return model


def _login(port: int, email: str) -> veil.Client:
    return veil.login(email, PASSWORD, port=port, verbose=False)


def _time_logins(port: int, email: str, *, seconds: float, every: float) -> list[float]:
    """Milliseconds of `POST /auth/login` on a kept-alive connection."""
    times = []
    body = {"email": email, "password": PASSWORD}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=120) as http:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.perf_counter()
            http.post("/auth/login", json=body).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
            time.sleep(every)
    return times


def _argon2_ms(repeats: int = 5) -> float:
    hashed = hash_password(PASSWORD)
    start = time.perf_counter()
    for _ in range(repeats):
        verify_password(hashed, PASSWORD)
    return (time.perf_counter() - start) / repeats * 1000


def _stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p90_ms": float(np.percentile(ordered, 90)),
        "p99_ms": float(np.percentile(ordered, 99)),
        "max_ms": ordered[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument("--every", type=float, default=0.2, help="pause between logins")
    parser.add_argument("--steppers", type=int, default=4)
    parser.add_argument("--fitters", type=int, default=2)
    parser.add_argument("--database-url", default=None)
    size_flags(
        parser,
        RESULTS,
        quick="20 seconds, 5 idle",
        tiny="2 seconds, 1 idle, one stepper and one fitter",
    )
    args = parser.parse_args()
    if args.tiny:
        args.seconds, args.idle_seconds, args.steppers, args.fitters = 2.0, 1.0, 1, 1
    elif args.quick:
        args.seconds, args.idle_seconds = 20.0, 5.0

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        command = [sys.executable, "-m", "veil.cli", "serve", "--demo", "--port", str(port)]
        command += ["--data-dir", str(Path(tmp) / "node")]
        if args.database_url:
            command += ["--database-url", args.database_url]
        env = {**os.environ, "VEIL_LOG_LEVEL": "warning", "VEIL_JOB_WORKERS": str(args.fitters)}
        node = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        try:
            admin = login_when_up(node, port)
            # A node from before issue 8 has no such limit (the run compares with one).
            with contextlib.suppress(veil.ValidationError):
                admin.update_node(max_running_jobs=args.fitters)
            emails = [f"user{i}@bench.org" for i in range(args.steppers + args.fitters + 1)]
            for email in emails:
                admin.users.create(email=email, password=PASSWORD, budget=1e9)
            prober = emails[-1]
            idle = _time_logins(port, prober, seconds=args.idle_seconds, every=args.every)

            stop = threading.Event()
            steps = [0] * args.steppers

            def stepper(index: int) -> None:
                client = _login(port, emails[index])
                data = client.datasets["BreastCancerDataset"]
                x, y = data["train_images"][0:ROWS], data["train_labels"][0:ROWS]
                model_ptr = _cnn().compile(to=client)
                while not stop.is_set():
                    model_ptr.step(x, y)
                    steps[index] += 1

            fits = []
            for index in range(args.steppers, args.steppers + args.fitters):
                client = _login(port, emails[index])
                data = client.datasets["BreastCancerDataset"]
                model_ptr = _cnn().compile(to=client)
                model_ptr.fit(
                    data["train_images"],
                    data["train_labels"],
                    max_iter=1000,
                    batch_size=32,
                    wait=False,
                )
                fits.append(model_ptr)
            threads = [threading.Thread(target=stepper, args=(i,)) for i in range(args.steppers)]
            for thread in threads:
                thread.start()
            time.sleep(5)  # everyone is busy before we measure
            loaded = _time_logins(port, prober, seconds=args.seconds, every=args.every)
            fit_steps = [f.progress()["step"] for f in fits]
            stop.set()
            for model_ptr in fits:
                model_ptr.cancel()
            for thread in threads:
                thread.join(timeout=600)
        finally:
            node.terminate()
            node.wait(timeout=120)

    rows = {"idle": _stats(idle), "loaded": _stats(loaded)}
    argon2 = _argon2_ms()
    database = "postgresql" if args.database_url else "sqlite"
    result = {
        "database": database,
        "steppers": args.steppers,
        "fitters": args.fitters,
        "rows_per_step": ROWS,
        "steps_done": steps,
        "fit_steps_done": fit_steps,
        "logins": rows,
        "argon2_verify_ms": argon2,
        "machine": {**machine(), "veil": veil.__version__},
    }
    print(f"Login latency on {database}, {os.cpu_count()} CPUs: {args.steppers} users stepping")
    print(f"on {ROWS} IDC rows each, {args.fitters} fits running")
    print(f"{'phase':8} {'n':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for phase, row in rows.items():
        print(
            f"{phase:8} {row['n']:>5} {row['p50_ms']:>9.1f} {row['p90_ms']:>9.1f} "
            f"{row['p99_ms']:>9.1f} {row['max_ms']:>9.1f}"
        )
    print(f"steps done while measuring: {steps}; fit steps: {fit_steps}")
    print(f"one argon2 verification here, after the run: {argon2:.1f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    name = args.out
    name.write_text(json.dumps(result, indent=2))
    print(f"wrote {name}")


if __name__ == "__main__":
    main()
