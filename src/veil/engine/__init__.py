"""`veil.engine`: DP-SGD training of a `veil.nn.ModelSpec` (torch; no web or DB imports).

The node and a data scientist's laptop run this same code. Per-example gradients are
clipped to `max_grad_norm`, summed, noised with N(0, (noise_multiplier *
max_grad_norm)^2) and divided by the expected batch size; `fit` samples Poisson batches
at q = batch_size / n_train for ceil(n_train / batch_size) steps per epoch. Noise and
sampling come from a cryptographically secure stream unless a seed is given; private
values never raise, a row that does not fit gets a fixed contribution.
"""

from veil.engine._build import build_module
from veil.engine._data import check_shapes, check_values
from veil.engine._results import EpochInfo, FitResult, RowMetrics, StepInfo, StepResult
from veil.engine._sampling import sampling_rate, steps_per_epoch
from veil.engine._trainer import DPTrainer

__all__ = [
    "DPTrainer",
    "EpochInfo",
    "FitResult",
    "RowMetrics",
    "StepInfo",
    "StepResult",
    "build_module",
    "check_shapes",
    "check_values",
    "sampling_rate",
    "steps_per_epoch",
]
