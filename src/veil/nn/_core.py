"""Core layers: `Flatten`, `Dense` (alias `Linear`), `Dropout`, `GroupNorm`,
`Rescaling`, `Normalization`, and `BatchNorm`, which only refuses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np

from veil._exceptions import SpecError
from veil.nn._config import (
    CONSTANT_LIMIT,
    Shape,
    check_activation,
    check_constant,
    check_float,
    check_int,
    format_shape,
)
from veil.nn._layer import ACTIVATION_FLOPS, Layer, elements

__all__ = [
    "BATCHNORM_REFUSAL",
    "BatchNorm",
    "Dense",
    "Dropout",
    "Flatten",
    "GroupNorm",
    "Linear",
    "Normalization",
    "Rescaling",
]

_MIN_STD = 1 / CONSTANT_LIMIT  # the least std the layer takes

BATCHNORM_REFUSAL = (
    "BatchNorm is not allowed: its batch statistics mix examples, so one row's value "
    "moves every other row's output and gradient. Per-example clipping then cannot bound "
    "one row's influence, and DP-SGD forbids it. Use GroupNorm(groups) instead, which "
    "normalises each example on its own."
)


class Flatten(Layer):
    """`(None, d1, d2, ...)` -> `(None, d1 * d2 * ...)`."""

    def __init__(self, *, input_shape: Sequence[int | None] | None = None) -> None:
        super().__init__(input_shape=input_shape)

    def _output_shape(self, shape: Shape) -> Shape:
        self._expect_rank(shape, (2, 3, 4), "(None, d1, ...)")
        return (None, elements(shape))


class Dense(Layer):
    """Fully connected layer on flat input `(None, features)`; `Linear` is an alias."""

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        *,
        input_shape: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape)
        self.units = check_int(self.name, "units", units)
        self.activation = check_activation(self.name, activation)

    def _config(self) -> dict[str, Any]:
        return {"units": self.units, "activation": self.activation}

    def _output_shape(self, shape: Shape) -> Shape:
        self._expect_rank(shape, (2,), "(None, features); add Flatten() before it")
        return (None, self.units)

    def count_params(self, input_shape: Sequence[int | None]) -> int:
        self.compute_output_shape(input_shape)
        return int(input_shape[1]) * self.units + self.units  # type: ignore[arg-type]

    def flops(self, input_shape: Sequence[int | None]) -> int:
        self.compute_output_shape(input_shape)
        features = int(input_shape[1])  # type: ignore[arg-type]
        return self.units * (2 * features + 1 + ACTIVATION_FLOPS[self.activation])


Linear = Dense


class Dropout(Layer):
    """Zeroes each value with probability `rate` in training (a fresh mask per example)."""

    def __init__(self, rate: float, *, input_shape: Sequence[int | None] | None = None) -> None:
        super().__init__(input_shape=input_shape)
        self.rate = check_float(self.name, "rate", rate, low=0.0, high=1.0, high_open=True)

    def _config(self) -> dict[str, Any]:
        return {"rate": self.rate}

    def flops(self, input_shape: Sequence[int | None]) -> int:
        return elements(self.compute_output_shape(input_shape))


class GroupNorm(Layer):
    """Normalises each example over groups of channels (axis 1), with a learned affine."""

    def __init__(self, groups: int, *, input_shape: Sequence[int | None] | None = None) -> None:
        super().__init__(input_shape=input_shape)
        self.groups = check_int(self.name, "groups", groups)

    def _config(self) -> dict[str, Any]:
        return {"groups": self.groups}

    def _output_shape(self, shape: Shape) -> Shape:
        self._expect_rank(shape, (2, 3, 4), "(None, channels, ...)")
        if shape[1] % self.groups:  # type: ignore[operator]
            raise SpecError(
                f"{self.name} expects a channel count (axis 1) divisible by "
                f"groups={self.groups}. Received: input_shape={format_shape(shape)}"
            )
        return shape

    def count_params(self, input_shape: Sequence[int | None]) -> int:
        self.compute_output_shape(input_shape)
        return 2 * int(input_shape[1])  # type: ignore[arg-type]

    def flops(self, input_shape: Sequence[int | None]) -> int:
        return 8 * elements(self.compute_output_shape(input_shape))


class Rescaling(Layer):
    """`x * scale + offset` with public constants, e.g. `Rescaling(1 / 255)` for images.

    Constants are limited to |c| <= 1e6 (`CONSTANT_LIMIT`)."""

    def __init__(
        self,
        scale: float,
        offset: float = 0.0,
        *,
        input_shape: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape)
        self.scale = check_constant(self.name, "scale", scale)
        self.offset = check_constant(self.name, "offset", offset)

    def _config(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset": self.offset}

    def flops(self, input_shape: Sequence[int | None]) -> int:
        return 2 * elements(self.compute_output_shape(input_shape))


def _constants(owner: str, name: str, value: object, *, positive: bool) -> float | list[float]:
    if isinstance(value, list | tuple):
        if not value:
            raise SpecError(
                f"{owner} expects {name} of a number or a non-empty list. "
                f"Received: {name}={value!r}"
            )
        return [
            check_constant(owner, f"{name}[{i}]", v, positive=positive) for i, v in enumerate(value)
        ]
    return check_constant(owner, name, value, positive=positive)


class Normalization(Layer):
    """`(x - mean) / std` with public constants: scalars, or one value per channel (axis 1).

    The constants are part of the spec, never learned. `Normalization.adapt(x_ptr)`
    takes them from the private data as a noised, charged release (as Keras' `adapt`,
    but differentially private); or give public statistics.
    """

    def __init__(
        self,
        mean: float | Sequence[float],
        std: float | Sequence[float],
        *,
        input_shape: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape)
        self.mean = _constants(self.name, "mean", mean, positive=False)
        self.std = _constants(self.name, "std", std, positive=True)

    def _config(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def adapt(cls, data: Any, *, epsilon: float = 0.1, verbose: bool = True) -> Normalization:
        """A Normalization with the per-channel (axis 1) mean and std of `data`.

        A pointer to data on a node: the node releases them with noise, charging
        `epsilon` to your budget; with `verbose` the cost is printed before it is spent.
        A numpy array (your own data, or a mock): computed here, exactly.
        """
        if hasattr(data, "statistics"):
            quote = data.quote_statistics(epsilon=epsilon)
            if verbose:
                print(
                    f"Normalization.adapt: releasing the noised mean and std of {data.name} "
                    f"({quote['rows']} rows, {quote['channels']} channels) costs epsilon "
                    f"{quote['cost']:.4g} of the {quote['remaining']:.4g} left in your budget."
                )
            stats = data.statistics(epsilon=epsilon).get()
            mean, std, shape = stats["mean"], stats["std"], tuple(data.public_shape)
        else:
            array = np.asarray(data, dtype=np.float64)
            if array.ndim < 2:
                raise SpecError(
                    "Normalization.adapt expects rows of shape (N, channels, ...). "
                    f"Received: an array of shape {array.shape}"
                )
            axes = (0, *range(2, array.ndim))
            mean, std, shape = array.mean(axis=axes), array.std(axis=axes), array.shape
        return cls(
            mean=[float(m) for m in mean],
            std=[max(float(s), _MIN_STD) for s in std],
            input_shape=(None, *shape[1:]),
        )

    def _output_shape(self, shape: Shape) -> Shape:
        self._expect_rank(shape, (2, 3, 4), "(None, channels, ...)")
        for name, value in (("mean", self.mean), ("std", self.std)):
            if isinstance(value, list) and len(value) != shape[1]:
                raise SpecError(
                    f"{self.name} expects {name} of a number or one value per channel "
                    f"(axis 1: {shape[1]}). Received: {len(value)} values for input_shape="
                    f"{format_shape(shape)}"
                )
        return shape

    def flops(self, input_shape: Sequence[int | None]) -> int:
        return 2 * elements(self.compute_output_shape(input_shape))


class BatchNorm(Layer):
    """Refused under DP-SGD: constructing it raises `SpecError` pointing to `GroupNorm`."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise SpecError(BATCHNORM_REFUSAL)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        raise SpecError(BATCHNORM_REFUSAL)
