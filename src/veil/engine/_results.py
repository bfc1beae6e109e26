"""What the trainer reports. Raw values: the node noises anything a data scientist sees.

Per-row values are raw: a row that did not fit (non-finite input, label outside the
loss's range) or on which the model produced NaN or infinity carries a non-finite value
here, which every consumer maps to a fixed value (`RowMetrics.loss`, the node's release
path). Means are over every row, so their denominator is the public row count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veil.privacy import MeanOf

__all__ = ["EpochInfo", "FitResult", "RowMetrics", "StepInfo", "StepResult"]


@dataclass(frozen=True)
class StepInfo:
    """After each `fit` step. `step` counts from 1 over the whole run.

    `batch_size_actual` and `samples_seen` depend on which rows Poisson sampling drew:
    they are private, for local bookkeeping only, never for a data scientist.
    """

    epoch: int
    step: int
    steps_total: int
    samples_seen: int
    batch_size_actual: int


@dataclass(frozen=True)
class RowMetrics:
    """Raw per-row losses and accuracy (None for MeanSquaredError) over some rows."""

    losses: np.ndarray
    correct: np.ndarray | None
    loss_bound: float

    @property
    def n(self) -> int:
        return int(self.losses.shape[0])

    @property
    def loss(self) -> float:
        """Mean loss, each clipped to [0, loss_bound] (a non-finite one counts as the bound)."""
        bound = MeanOf(high=self.loss_bound, fill=self.loss_bound)
        return float(bound.aggregate(bound.bounded(self.losses), self.n))

    @property
    def accuracy(self) -> float | None:
        if self.correct is None:
            return None
        bound = MeanOf(high=1.0, fill=0.0)
        return float(bound.aggregate(bound.bounded(self.correct), self.n))


@dataclass(frozen=True)
class EpochInfo:
    """After each full epoch: raw per-row validation metrics (None without val rows),
    and the rows they are of (`val_rows`, or by subject with `rows_per_subject`, the
    k slots validation took of each held-out subject, where `validation_real` marks
    the slots that hold one of its rows: the others are padding, to be left out)."""

    epoch: int
    validation: RowMetrics | None
    validation_rows: np.ndarray | None = None
    validation_real: np.ndarray | None = None

    @property
    def _kept(self) -> RowMetrics | None:
        metrics, real = self.validation, self.validation_real
        if metrics is None or real is None:
            return metrics
        correct = None if metrics.correct is None else metrics.correct[real]
        return RowMetrics(metrics.losses[real], correct, metrics.loss_bound)

    @property
    def val_loss(self) -> float | None:
        kept = self._kept
        return None if kept is None else kept.loss

    @property
    def val_accuracy(self) -> float | None:
        kept = self._kept
        return None if kept is None else kept.accuracy


@dataclass(frozen=True)
class FitResult:
    """How a `fit` ended: steps run (the accounting charges these), and whether
    `should_stop` cut it short. `sampling_rate` and `steps_per_epoch` are the q and
    step count the run used."""

    steps_done: int
    steps_total: int
    epochs_done: int
    stopped: bool
    sampling_rate: float
    steps_per_epoch: int
    history: tuple[EpochInfo, ...]


@dataclass(frozen=True)
class StepResult:
    """One `step`: per-row losses and outputs (probabilities) from the forward pass
    before the update. Raw: private until released."""

    metrics: RowMetrics
    preds: np.ndarray

    @property
    def loss(self) -> float:
        return self.metrics.loss
