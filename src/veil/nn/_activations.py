"""Activation layers: `ReLU`, `LeakyReLU`, `Sigmoid`, `Tanh`, `Softmax` (over axis 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from veil.nn._config import Shape, check_constant
from veil.nn._layer import ACTIVATION_FLOPS, Layer, elements

__all__ = ["LeakyReLU", "ReLU", "Sigmoid", "Softmax", "Tanh"]


class _Activation(Layer):
    activation: str = ""

    def __init__(self, *, input_shape: Sequence[int | None] | None = None) -> None:
        super().__init__(input_shape=input_shape)

    def flops(self, input_shape: Sequence[int | None]) -> int:
        return elements(self.compute_output_shape(input_shape)) * ACTIVATION_FLOPS[self.activation]


class ReLU(_Activation):
    activation = "relu"


class LeakyReLU(_Activation):
    """`max(x, slope * x)`."""

    activation = "leaky_relu"

    def __init__(
        self, slope: float = 0.01, *, input_shape: Sequence[int | None] | None = None
    ) -> None:
        super().__init__(input_shape=input_shape)
        self.slope = check_constant(self.name, "slope", slope)

    def _config(self) -> dict[str, Any]:
        return {"slope": self.slope}


class Sigmoid(_Activation):
    activation = "sigmoid"


class Tanh(_Activation):
    activation = "tanh"


class Softmax(_Activation):
    """Softmax over axis 1 (the class axis of `(None, classes)`)."""

    activation = "softmax"

    def _output_shape(self, shape: Shape) -> Shape:
        self._expect_rank(shape, (2, 3, 4), "(None, classes, ...)")
        return shape
