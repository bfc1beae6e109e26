"""Losses. As in Keras, each takes the model's output as probabilities.

The node computes them on the pre-activation in the numerically stable fused way when
the model ends in `Sigmoid` (with `BinaryCrossEntropy`) or `Softmax` (with
`CrossEntropy`); otherwise the output is clipped to [1e-7, 1 - 1e-7] before the log.
Per-example losses are clipped to [0, loss_bound] wherever a loss is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from veil.nn._config import Configurable, deserialize, serialize
from veil.nn.layers import Layer, final_activation

__all__ = [
    "LOSSES",
    "BinaryCrossEntropy",
    "CrossEntropy",
    "Loss",
    "MeanSquaredError",
    "infer_loss",
    "loss_from_dict",
    "loss_to_dict",
]


class Loss(Configurable):
    """Base of the whitelisted losses (no arguments: nothing to validate)."""

    def __init__(self) -> None:
        pass


class BinaryCrossEntropy(Loss):
    """Labels in {0, 1}; the output holds probabilities; mean over each example's values."""


class CrossEntropy(Loss):
    """Integer class labels in [0, classes) against a `(None, classes)` output."""


class MeanSquaredError(Loss):
    """Mean over each example's values of the squared difference."""


LOSSES: MappingProxyType[str, type[Loss]] = MappingProxyType(
    {cls.__name__: cls for cls in (BinaryCrossEntropy, CrossEntropy, MeanSquaredError)}
)


def infer_loss(layers: Sequence[Layer]) -> Loss:
    """The loss `compile()` picks when given none: from the last activation."""
    last = final_activation(layers)
    if last == "sigmoid":
        return BinaryCrossEntropy()
    if last == "softmax":
        return CrossEntropy()
    return MeanSquaredError()


def loss_to_dict(loss: Loss) -> dict[str, Any]:
    return serialize(loss)


def loss_from_dict(data: object) -> Loss:
    loss = deserialize("loss", LOSSES, data)
    assert isinstance(loss, Loss)
    return loss
