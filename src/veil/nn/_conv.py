"""Image layers on NCHW input: `Convolution`, `MaxPool`, `AvgPool`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from veil._exceptions import SpecError
from veil.nn._config import Shape, check_activation, check_int, check_pair, format_shape
from veil.nn._layer import ACTIVATION_FLOPS, Layer, elements

__all__ = ["AvgPool", "Convolution", "MaxPool"]

_NCHW = "(None, channels, height, width)"


def _window_out(size: int, window: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - window) // stride + 1


class Convolution(Layer):
    """2-D convolution over NCHW images, with an optional activation.

    `Convolution(filters, kernel_size, input_shape=None, stride=1, padding=0,
    activation=None)`; `kernel_size`, `stride` and `padding` take an int or a pair.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        input_shape: Sequence[int | None] | None = None,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        activation: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape)
        self.filters = check_int(self.name, "filters", filters)
        self.kernel_size = check_pair(self.name, "kernel_size", kernel_size)
        self.stride = check_pair(self.name, "stride", stride)
        self.padding = check_pair(self.name, "padding", padding, minimum=0)
        self.activation = check_activation(self.name, activation)

    def _config(self) -> dict[str, Any]:
        return {
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "activation": self.activation,
        }

    def _output_shape(self, shape: Shape) -> Shape:
        self._expect_rank(shape, (4,), _NCHW)
        _, _, h, w = shape
        assert h is not None and w is not None
        out_h = _window_out(h, self.kernel_size[0], self.stride[0], self.padding[0])
        out_w = _window_out(w, self.kernel_size[1], self.stride[1], self.padding[1])
        if out_h < 1 or out_w < 1:
            raise SpecError(
                f"{self.name} expects an image at least as large as kernel_size="
                f"{self.kernel_size} after padding={self.padding}. "
                f"Received: input_shape={format_shape(shape)}"
            )
        return (None, self.filters, out_h, out_w)

    def count_params(self, input_shape: Sequence[int | None]) -> int:
        self.compute_output_shape(input_shape)
        channels = int(input_shape[1])  # type: ignore[arg-type]
        kh, kw = self.kernel_size
        return self.filters * channels * kh * kw + self.filters

    def flops(self, input_shape: Sequence[int | None]) -> int:
        out = self.compute_output_shape(input_shape)
        channels = int(input_shape[1])  # type: ignore[arg-type]
        kh, kw = self.kernel_size
        per_output = 2 * channels * kh * kw + 1 + ACTIVATION_FLOPS[self.activation]
        return elements(out) * per_output


class _Pool(Layer):
    def __init__(
        self,
        pool_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        *,
        input_shape: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape)
        self.pool_size = check_pair(self.name, "pool_size", pool_size)
        self.stride = None if stride is None else check_pair(self.name, "stride", stride)

    @property
    def strides(self) -> tuple[int, int]:
        """The stride in use: `pool_size` when none was given, as in Keras."""
        return self.pool_size if self.stride is None else self.stride

    def _config(self) -> dict[str, Any]:
        return {
            "pool_size": list(self.pool_size),
            "stride": None if self.stride is None else list(self.stride),
        }

    def _output_shape(self, shape: Shape) -> Shape:
        self._expect_rank(shape, (4,), _NCHW)
        _, channels, h, w = shape
        assert h is not None and w is not None
        out_h = _window_out(h, self.pool_size[0], self.strides[0], 0)
        out_w = _window_out(w, self.pool_size[1], self.strides[1], 0)
        if out_h < 1 or out_w < 1:
            raise SpecError(
                f"{self.name} expects an image at least as large as pool_size="
                f"{self.pool_size}. Received: input_shape={format_shape(shape)}"
            )
        return (None, channels, out_h, out_w)

    def flops(self, input_shape: Sequence[int | None]) -> int:
        out = self.compute_output_shape(input_shape)
        return elements(out) * self.pool_size[0] * self.pool_size[1]


class MaxPool(_Pool):
    """2-D max pooling; `stride` defaults to `pool_size`."""


class AvgPool(_Pool):
    """2-D average pooling; `stride` defaults to `pool_size`."""
