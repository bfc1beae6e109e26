"""Empirical privacy audit of Veil's DP-SGD: lower bounds against charged epsilons.

Plants gradient canaries (`veil.audit`), trains with the engine's secure DP-SGD at a
noise calibrated to each target epsilon, and turns the one-run audit's guesses into an
epsilon lower bound at 95% confidence (`veil.privacy.audit`). Beside the sound engine
it runs two broken ones (noise off; clipping 100x looser than charged) to show the
audit has teeth. Prints a table and writes ``benchmarks/results/privacy_audit.json``.

    python benchmarks/privacy_audit.py [--quick] [--canaries 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from _sizes import machine, size_flags

from veil.audit import canary_model, canary_scores, make_canaries
from veil.engine import DPTrainer, _trainer
from veil.engine._randomness import SecureRandomness
from veil.privacy import calibrate_sigma, poisson_gaussian
from veil.privacy.audit import audit_guesses

RESULTS = Path(__file__).resolve().parent / "results" / "privacy_audit.json"
DELTA = 1e-5
EPOCHS = 10


@contextmanager
def _noise_off() -> Iterator[None]:
    original = SecureRandomness.normal
    SecureRandomness.normal = lambda self, count, device: torch.zeros(count, device=device)
    try:
        yield
    finally:
        SecureRandomness.normal = original


@contextmanager
def _clipping_too_loose() -> Iterator[None]:
    original = _trainer.clip_and_sum
    _trainer.clip_and_sum = lambda grads, clip, valid: original(grads, 100 * clip, valid)
    try:
        yield
    finally:
        _trainer.clip_and_sum = original


@contextmanager
def _sound() -> Iterator[None]:
    yield


CONFIGS: dict[str, Callable[[], object]] = {
    "sound": _sound,
    "noise off": _noise_off,
    "clipping 100x": _clipping_too_loose,
}


def audit_once(*, canaries: int, target: float, seed: int) -> dict[str, float]:
    data = make_canaries(canaries=canaries, rows=canaries, seed=seed)
    n = data.x.shape[0]
    batch = n // 10
    q, steps = batch / n, EPOCHS * int(np.ceil(n / batch))
    sigma = calibrate_sigma(target, lambda s: poisson_gaussian(q, s, steps).epsilon(DELTA))
    trainer = DPTrainer(canary_model(data, noise_multiplier=sigma))
    before = trainer.get_weights()
    trainer.fit(data.x, data.y, train_rows=np.arange(n), epochs=EPOCHS, batch_size=batch)
    result = audit_guesses(
        canary_scores(data, before, trainer.get_weights()), data.included, delta=DELTA
    )
    return {
        "charged": poisson_gaussian(q, sigma, steps).epsilon(DELTA),
        "lower_bound": result.epsilon,
        "guesses": result.guesses,
        "correct": result.correct,
        "sigma": sigma,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canaries", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3, help="independent runs per cell")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    size_flags(
        parser, RESULTS, quick="500 canaries, one run, eps 2", tiny="50 canaries, one run, eps 2"
    )
    args = parser.parse_args()
    if args.tiny:
        args.canaries, args.runs, args.epsilons = 50, 1, [2.0]
    elif args.quick:
        args.canaries, args.runs, args.epsilons = 500, 1, [2.0]

    # The most a perfect attack can show with this many canaries: the audit's reach.
    truth = np.arange(args.canaries) % 2 == 0
    reach = audit_guesses(truth.astype(float), truth, delta=DELTA).epsilon
    print(f"{args.canaries} canaries; a perfect attack shows at most epsilon {reach:.2f}\n")
    rows = []
    print(f"{'engine':<14} {'charged eps':>11} {'audit lower bound (runs)':>28} {'verdict':>22}")
    for name, config in CONFIGS.items():
        for target in args.epsilons:
            with config():
                runs = [
                    audit_once(canaries=args.canaries, target=target, seed=seed)
                    for seed in range(args.runs)
                ]
            charged = runs[0]["charged"]
            bounds = [r["lower_bound"] for r in runs]
            caught = max(bounds) > charged
            if name == "sound":
                verdict = "VIOLATION" if caught else "ok: below the charge"
            elif caught:
                verdict = "caught"
            else:
                verdict = "beyond the audit's reach" if charged >= reach else "missed"
            shown = ", ".join(f"{b:.2f}" for b in bounds)
            print(f"{name:<14} {charged:>11.3f} {shown:>28} {verdict:>22}")
            rows.append({"engine": name, "target": target, "runs": runs, "caught": caught})

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "privacy_audit",
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": {**machine(), "torch": torch.__version__},
                "canaries": args.canaries,
                "reach": reach,
                "delta": DELTA,
                "confidence": 0.95,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
