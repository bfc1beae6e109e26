"""What the trainer reports. Raw values: the node noises anything a data scientist sees."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EpochInfo", "FitResult", "StepInfo", "StepResult"]


@dataclass(frozen=True)
class StepInfo:
    """After each `fit` step. `step` counts from 1 over the whole run.

    `batch_size_actual` and `samples_seen` depend on which rows Poisson sampling drew:
    they are private, for the node's own bookkeeping, never for a data scientist.
    """

    epoch: int
    step: int
    steps_total: int
    samples_seen: int
    batch_size_actual: int


@dataclass(frozen=True)
class EpochInfo:
    """After each full epoch: raw validation metrics (None when there are no val rows).

    `val_loss` is the mean of per-example losses clipped to [0, loss_bound];
    `val_accuracy` is None for MeanSquaredError.
    """

    epoch: int
    val_loss: float | None
    val_accuracy: float | None
    n_val: int


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
    """One `step`: the mean clipped loss of the batch and its predictions (probabilities),
    both from the forward pass before the update. Raw: private until released."""

    loss: float
    preds: np.ndarray
