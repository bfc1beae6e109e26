"""Optimizers, applied on the node to the noised, clipped DP-SGD gradient.

Only the learning rate (and SGD's momentum) are settable; the rest are torch defaults.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from veil.nn._config import CONSTANT_LIMIT, Configurable, check_float, deserialize, serialize

__all__ = [
    "OPTIMIZERS",
    "SGD",
    "Adam",
    "Adamax",
    "Optimizer",
    "RMSprop",
    "optimizer_from_dict",
    "optimizer_to_dict",
]


class Optimizer(Configurable):
    """Base of the whitelisted optimizers."""

    def __init__(self, lr: float) -> None:
        self.lr = check_float(self.name, "lr", lr, low=0.0, high=CONSTANT_LIMIT, low_open=True)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr}


class Adamax(Optimizer):
    def __init__(self, lr: float = 0.002) -> None:
        super().__init__(lr)


class Adam(Optimizer):
    def __init__(self, lr: float = 0.001) -> None:
        super().__init__(lr)


class RMSprop(Optimizer):
    def __init__(self, lr: float = 0.001) -> None:
        super().__init__(lr)


class SGD(Optimizer):
    def __init__(self, lr: float = 0.01, momentum: float = 0.0) -> None:
        super().__init__(lr)
        self.momentum = check_float(
            self.name, "momentum", momentum, low=0.0, high=1.0, high_open=True
        )

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum}


OPTIMIZERS: MappingProxyType[str, type[Optimizer]] = MappingProxyType(
    {cls.__name__: cls for cls in (Adamax, Adam, SGD, RMSprop)}
)


def optimizer_to_dict(optimizer: Optimizer) -> dict[str, Any]:
    return serialize(optimizer)


def optimizer_from_dict(data: object) -> Optimizer:
    optimizer = deserialize("optimizer", OPTIMIZERS, data)
    assert isinstance(optimizer, Optimizer)
    return optimizer
