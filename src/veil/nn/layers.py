"""The layer whitelist: `LAYERS` maps each allowed `class_name` to its class.

A spec naming anything outside `LAYERS` is refused; BatchNorm (under any of its usual
names) is refused with the reason and the alternative.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from veil.nn._activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from veil.nn._config import deserialize, serialize
from veil.nn._conv import AvgPool, Convolution, MaxPool
from veil.nn._core import (
    BATCHNORM_REFUSAL,
    BatchNorm,
    Dense,
    Dropout,
    Flatten,
    GroupNorm,
    Linear,
    Normalization,
    Rescaling,
)
from veil.nn._layer import Layer

__all__ = [
    "LAYERS",
    "AvgPool",
    "BatchNorm",
    "Convolution",
    "Dense",
    "Dropout",
    "Flatten",
    "GroupNorm",
    "Layer",
    "LeakyReLU",
    "Linear",
    "MaxPool",
    "Normalization",
    "ReLU",
    "Rescaling",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "final_activation",
    "layer_from_dict",
    "layer_to_dict",
]

LAYERS: MappingProxyType[str, type[Layer]] = MappingProxyType(
    {
        cls.__name__: cls
        for cls in (
            Convolution,
            MaxPool,
            AvgPool,
            Flatten,
            Dense,
            ReLU,
            LeakyReLU,
            Sigmoid,
            Tanh,
            Softmax,
            Dropout,
            GroupNorm,
            Rescaling,
            Normalization,
        )
    }
)

_REFUSED = MappingProxyType(
    {
        name: BATCHNORM_REFUSAL
        for name in ("BatchNorm", "BatchNormalization", "BatchNorm1d", "BatchNorm2d")
    }
)


def layer_to_dict(layer: Layer) -> dict[str, Any]:
    """`{"class_name": "Dense", "config": {...}}`, the form a spec carries."""
    return serialize(layer)


def layer_from_dict(data: object) -> Layer:
    """Rebuild a layer from `{"class_name", "config"}`; only `LAYERS` are allowed."""
    layer = deserialize("layer", LAYERS, data, refused=_REFUSED)
    assert isinstance(layer, Layer)
    return layer


def final_activation(layers: Sequence[Layer]) -> str | None:
    """The activation the model ends in ("sigmoid", "softmax", ...), or None."""
    if not layers:
        return None
    last = layers[-1]
    if isinstance(last, Sigmoid | Softmax | Tanh | ReLU | LeakyReLU):
        return last.activation
    if isinstance(last, Dense | Convolution):
        return last.activation
    return None
