"""Subject-level against row-level DP-SGD on the demo IDC patches (200 patients).

Two figures, both from the engine (`DPTrainer`) on the demo's private train split:

- throughput: rows trained per second in one epoch, row level (Poisson over rows) and
  subject level (Poisson over patients, each patient's summed gradient clipped once),
  with the same expected rows per step, interleaved, best of `--repeats`;
- accuracy on the public test split (disjoint patients) at epsilon 3 (delta 1e-5),
  each level's noise calibrated to its own accounting, mean over `--seeds` runs. The
  row-level run protects one patch; the subject-level run protects one patient.

Prints a table and writes ``benchmarks/results/subject_level.json``.

    python benchmarks/subject_level.py [--quick] [--repeats 3] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from _sizes import machine, size_flags

from veil import nn
from veil.demo import private_train_split, public_test_split
from veil.engine import DPTrainer, sampling_rate, steps_per_epoch
from veil.privacy import calibrate_sigma, poisson_gaussian

RESULTS = Path(__file__).resolve().parent / "results" / "subject_level.json"
DATASET = "BreastCancerDataset"
DELTA = 1e-5


def idc_cnn(sigma: float = 1.0) -> nn.ModelSpec:
    """A small CNN that learns the demo patches under DP: colour and texture at 10x10."""
    model = nn.Model()
    model.add(nn.Rescaling(1 / 255, input_shape=(None, 3, 50, 50)))
    model.add(nn.AvgPool(5))
    model.add(nn.Convolution(8, 3, activation="relu"))
    model.add(nn.MaxPool(2))
    model.add(nn.Flatten())
    model.add(nn.Dense(16, activation="relu"))
    model.add(nn.Dense(1))
    model.add(nn.Sigmoid())
    spec = model.to_spec(
        loss=nn.BinaryCrossEntropy(),
        optimizer=nn.Adam(lr=0.01),
        noise_multiplier=sigma,
        max_grad_norm=1.0,
    )
    return nn.ModelSpec.from_dict(spec)


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train = private_train_split(DATASET)
    return train["train_images"], train["train_labels"], train["patient_id"]


def _fit(
    x: np.ndarray,
    y: np.ndarray,
    patients: np.ndarray | None,
    *,
    batch: int,
    epochs: int,
    sigma: float,
    seed: int | None = None,
) -> DPTrainer:
    trainer = DPTrainer(idc_cnn(sigma), seed=seed)
    trainer.fit(
        x, y, train_rows=np.arange(len(x)), epochs=epochs, batch_size=batch, subjects=patients
    )
    return trainer


def throughput(repeats: int, rows_per_step: int) -> dict[str, float]:
    x, y, patients = _data()
    per_patient = len(x) / np.unique(patients).size
    subject_batch = max(1, round(rows_per_step / per_patient))
    best = {"row": 0.0, "subject": 0.0}
    for _ in range(repeats):
        for level in ("row", "subject"):
            start = time.perf_counter()
            if level == "row":
                _fit(x, y, None, batch=rows_per_step, epochs=1, sigma=1.0)
            else:
                _fit(x, y, patients, batch=subject_batch, epochs=1, sigma=1.0)
            best[level] = max(best[level], len(x) / (time.perf_counter() - start))
    return {
        "rows_per_second_row_level": best["row"],
        "rows_per_second_subject_level": best["subject"],
        "subject_over_row": best["subject"] / best["row"],
        "rows_per_step": rows_per_step,
        "patients_per_step": subject_batch,
    }


def _sigma_for(epsilon: float, units: int, batch: int, epochs: int) -> float:
    q, steps = sampling_rate(units, batch), epochs * steps_per_epoch(units, batch)
    return calibrate_sigma(epsilon, lambda s: poisson_gaussian(q, s, steps).epsilon(DELTA))


def accuracy(epsilon: float, seeds: int, epochs: int, rows_per_step: int) -> dict[str, float]:
    x, y, patients = _data()
    test_x, test_y = public_test_split(DATASET)
    n_patients = np.unique(patients).size
    subject_batch = max(1, round(rows_per_step * n_patients / len(x)))
    out: dict[str, float] = {}
    for level, units, batch, groups in (
        ("row", len(x), rows_per_step, None),
        ("subject", n_patients, subject_batch, patients),
    ):
        sigma = _sigma_for(epsilon, units, batch, epochs)
        scores = []
        for seed in range(seeds):
            trainer = _fit(x, y, groups, batch=batch, epochs=epochs, sigma=sigma, seed=seed)
            predictions = trainer.predict(test_x)[:, 0] > 0.5
            scores.append(float((predictions == test_y).mean()))
        out[f"accuracy_{level}_level"] = float(np.mean(scores))
        out[f"sigma_{level}_level"] = sigma
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size_flags(
        parser,
        RESULTS,
        quick="fewer repeats, seeds, epochs",
        tiny="a smoke run (used by the tests)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--rows-per-step", type=int, default=64)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.seeds, args.epochs = 1, 1, 8
    if args.tiny:
        args.repeats, args.seeds, args.epochs = 1, 1, 1
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    speed = throughput(args.repeats, args.rows_per_step)
    acc = accuracy(args.epsilon, args.seeds, args.epochs, args.rows_per_step)
    print(f"{'':28} {'row level':>12} {'subject level':>14}")
    print(
        f"{'rows / s (one epoch)':28} {speed['rows_per_second_row_level']:12.0f} "
        f"{speed['rows_per_second_subject_level']:14.0f}"
    )
    print(
        f"{f'test accuracy at eps {args.epsilon:g}':28} {acc['accuracy_row_level']:12.3f} "
        f"{acc['accuracy_subject_level']:14.3f}"
    )
    print(f"{'protects':28} {'one patch':>12} {'one patient':>14}")
    print(f"subject / row throughput: {speed['subject_over_row']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {**machine(), "torch": torch.__version__},
                "args": {k: str(v) for k, v in vars(args).items()},
                "throughput": speed,
                "accuracy": acc,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
