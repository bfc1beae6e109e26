"""`Layer`, the base of every layer: shape inference, parameter and FLOP counts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from veil._exceptions import SpecError
from veil.nn._config import Configurable, Shape, check_input_shape, format_shape

__all__ = ["ACTIVATION_FLOPS", "Layer", "as_shape", "elements"]

# Rough per-element forward cost, so that max_flops means the same for every model.
ACTIVATION_FLOPS: dict[str | None, int] = {
    None: 0,
    "relu": 1,
    "leaky_relu": 2,
    "sigmoid": 4,
    "tanh": 4,
    "softmax": 5,
}


def as_shape(value: object) -> Shape:
    """A full shape `(None, d1, ...)` from a tuple or a JSON list; SpecError otherwise."""
    if (
        isinstance(value, list | tuple)
        and len(value) >= 1
        and value[0] is None
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value[1:])
    ):
        return (None, *(int(d) for d in value[1:]))
    raise SpecError(
        f"A shape is (None, d1, ...): the batch axis first as None, then positive ints. "
        f"Received: {value!r}"
    )


class Layer(Configurable):
    """One whitelisted layer. Subclasses validate their arguments in `__init__`.

    Shapes are full shapes with the batch axis first as `None`; images are NCHW.
    `count_params` and `flops` are per example and need the shape flowing in.
    """

    def __init__(self, *, input_shape: Sequence[int | None] | None = None) -> None:
        self.input_shape: Shape | None = check_input_shape(self.name, input_shape)

    def get_config(self) -> dict[str, Any]:
        config = self._config()
        if self.input_shape is not None:
            config["input_shape"] = list(self.input_shape)
        return config

    def _config(self) -> dict[str, Any]:
        return {}

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        return self._output_shape(as_shape(input_shape))

    def count_params(self, input_shape: Sequence[int | None]) -> int:
        self.compute_output_shape(input_shape)
        return 0

    def flops(self, input_shape: Sequence[int | None]) -> int:
        """Approximate forward FLOPs for one example (a multiply-add counts 2)."""
        self.compute_output_shape(input_shape)
        return 0

    def _output_shape(self, shape: Shape) -> Shape:
        return shape

    def _expect_rank(self, shape: Shape, ranks: Sequence[int], form: str) -> None:
        if len(shape) not in ranks:
            raise SpecError(
                f"{self.name} expects input of shape {form}. "
                f"Received: input_shape={format_shape(shape)}"
            )


def elements(shape: Shape) -> int:
    """Values per example in a full shape."""
    return math.prod(d for d in shape[1:] if d is not None)
