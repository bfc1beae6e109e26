"""An empirical privacy audit of Veil's DP-SGD with planted gradient canaries.

Each of m canaries is a row whose input is one large value in a feature of its own,
with a target far from what the model predicts: its gradient points along that one
weight, at the full clipping norm, every time it is sampled. Nothing else touches that
weight, so after training the weight's change is the canary's signal plus noise. Each
canary is included with probability 1/2 (`make_canaries`); the auditor scores every
canary by its weight's change (`canary_scores`) and `veil.privacy.audit.audit_guesses`
turns its guesses into an epsilon lower bound.

The same data serve the engine (`DPTrainer`) and a node (uploaded by the owner,
trained and published by a data scientist): `tests/` and `benchmarks/privacy_audit.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from veil.nn import SGD, Dense, MeanSquaredError, ModelSpec
from veil.privacy.audit import AuditResult, audit_guesses

__all__ = [
    "AuditResult",
    "Canaries",
    "audit_guesses",
    "canary_model",
    "canary_scores",
    "make_canaries",
]

_INPUT = 100.0  # a canary's one input value: its gradient is almost all along its weight
_TARGET = 1e3  # far above any prediction, so the gradient keeps its sign through training


@dataclass(frozen=True)
class Canaries:
    """Training rows (ordinary rows, then the included canaries) and the truth.

    `subject` gives each row's data subject: every ordinary row is its own, and each
    included canary is one subject owning `rows_per_canary` rows (a patient with many
    patches), which is what tells subject-level privacy from row-level privacy.
    """

    x: np.ndarray
    y: np.ndarray
    included: np.ndarray  # (m,) bool: which canaries are in x
    features: int  # ordinary features; canary j owns feature `features + j`
    subject: np.ndarray  # (rows,) int: each row's data subject

    @property
    def m(self) -> int:
        return int(self.included.shape[0])


def make_canaries(
    *, canaries: int, rows: int, features: int = 8, seed: int = 0, rows_per_canary: int = 1
) -> Canaries:
    """`rows` ordinary rows (a noisy linear target) and about half of `canaries`, each
    planted as `rows_per_canary` identical rows of one subject."""
    rng = np.random.default_rng(seed)
    width = features + canaries
    ordinary = np.zeros((rows, width), np.float32)
    ordinary[:, :features] = rng.normal(size=(rows, features))
    target = ordinary[:, :features] @ rng.normal(size=features) + rng.normal(size=rows)
    included = rng.random(canaries) < 0.5
    planted = np.repeat(np.flatnonzero(included), rows_per_canary)
    canary_x = np.zeros((planted.size, width), np.float32)
    canary_x[np.arange(planted.size), features + planted] = _INPUT
    x = np.concatenate([ordinary, canary_x])
    y = np.concatenate([target, np.full(planted.size, _TARGET)]).astype(np.float32)[:, None]
    subject = np.concatenate([np.arange(rows), rows + planted])
    return Canaries(x=x, y=y, included=included, features=features, subject=subject)


def canary_model(
    canaries: Canaries, *, lr: float = 0.5, noise_multiplier: float = 1.0
) -> ModelSpec:
    """One linear unit with plain SGD: a weight's change is its summed noisy gradient."""
    width = canaries.x.shape[1]
    return ModelSpec.build(
        (None, width),
        [Dense(1, input_shape=(None, width))],
        loss=MeanSquaredError(),
        optimizer=SGD(lr),
        noise_multiplier=noise_multiplier,
        max_grad_norm=1.0,
    )


def canary_scores(
    canaries: Canaries, before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]
) -> np.ndarray:
    """How far each canary's own weight moved towards its target: high means included."""
    moved = np.asarray(after["0.weight"], np.float64) - np.asarray(before["0.weight"], np.float64)
    return moved.reshape(-1)[canaries.features :]
