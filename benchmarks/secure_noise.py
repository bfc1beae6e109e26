"""What secure noise costs a DP-SGD step: the node's secure stream against torch's seeded
Mersenne Twister (what the engine used before), on three models.

Runs DP-SGD steps on a fixed batch with each source, interleaved, best of `--repeats`,
prints a table and writes ``benchmarks/results/secure_noise.json``.

    python benchmarks/secure_noise.py [--quick] [--repeats 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _sizes import machine, size_flags

from veil import nn
from veil.engine import DPTrainer
from veil.engine._randomness import SecureRandomness

RESULTS = Path(__file__).resolve().parent / "results" / "secure_noise.json"


def models() -> dict[str, tuple[nn.ModelSpec, int]]:
    idc = [
        nn.Rescaling(1 / 255, input_shape=(None, 3, 50, 50)),
        nn.Convolution(16, 3, activation="relu"),
        nn.MaxPool(2),
        nn.Convolution(32, 3, activation="relu"),
        nn.MaxPool(2),
        nn.Flatten(),
        nn.Dense(1, activation="sigmoid"),
    ]
    cnn = [
        nn.Convolution(32, 3, padding=1, activation="relu", input_shape=(None, 3, 32, 32)),
        nn.MaxPool(2),
        nn.Convolution(64, 3, padding=1, activation="relu"),
        nn.MaxPool(2),
        nn.Convolution(128, 3, padding=1, activation="relu"),
        nn.MaxPool(2),
        nn.Flatten(),
        nn.Dense(10, activation="softmax"),
    ]
    mlp = [
        nn.Dense(64, activation="relu", input_shape=(None, 30)),
        nn.Dense(64, activation="relu"),
        nn.Dense(1, activation="sigmoid"),
    ]
    return {
        "IDC CNN 3x50x50": (nn.ModelSpec.build((None, 3, 50, 50), idc), 256),
        "CNN 3x32x32": (nn.ModelSpec.build((None, 3, 32, 32), cnn), 128),
        "MLP 30-64-64-1": (nn.ModelSpec.build((None, 30), mlp), 256),
    }


def _batch(spec: nn.ModelSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(size, *spec.input_shape[1:])).astype(np.float32)
    classes = int(spec.output_shape[1])
    y = rng.integers(0, max(2, classes), size=size)
    return x, (y if classes > 1 else y.astype(np.float32))


def _seconds_per_step(trainer: DPTrainer, x: np.ndarray, y: np.ndarray, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(x, y)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    size_flags(parser, RESULTS, quick="1 repeat of 2 steps", tiny="1 repeat of 1 step")
    args = parser.parse_args()
    if args.tiny:
        args.repeats, args.steps = 1, 1
    elif args.quick:
        args.repeats, args.steps = 1, 2

    rows = []
    header = f"{'model (batch)':<24} {'params':>8} {'seeded ex/s':>12} {'secure ex/s':>12}"
    print(f"{header} {'secure/seeded':>14} {'noise ms':>9}")
    for name, (spec, batch) in models().items():
        x, y = _batch(spec, batch)
        secure, seeded = DPTrainer(spec), DPTrainer(spec, seed=0)
        _seconds_per_step(secure, x, y, 1), _seconds_per_step(seeded, x, y, 1)  # warm up
        best = {"secure": float("inf"), "seeded": float("inf")}
        for _ in range(args.repeats):  # interleaved, so load hits both alike
            best["seeded"] = min(best["seeded"], _seconds_per_step(seeded, x, y, args.steps))
            best["secure"] = min(best["secure"], _seconds_per_step(secure, x, y, args.steps))
        source = SecureRandomness()
        start = time.perf_counter()
        for _ in range(args.steps):
            source.normal(spec.param_count, torch.device("cpu"))
        noise_ms = (time.perf_counter() - start) / args.steps * 1e3
        ratio = best["seeded"] / best["secure"]
        print(
            f"{name + f' ({batch})':<24} {spec.param_count:>8,} {batch / best['seeded']:>12,.0f} "
            f"{batch / best['secure']:>12,.0f} {ratio:>14.3f} {noise_ms:>9.2f}"
        )
        rows.append(
            {
                "model": name,
                "batch": batch,
                "params": spec.param_count,
                "seeded_examples_per_s": batch / best["seeded"],
                "secure_examples_per_s": batch / best["secure"],
                "secure_over_seeded": ratio,
                "noise_ms_per_step": noise_ms,
            }
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "secure_noise",
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {
                    **machine(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                },
                "repeats": args.repeats,
                "steps": args.steps,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
