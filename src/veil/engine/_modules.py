"""The torch modules a spec is built into.

`VeilModule` runs the layers in order. Its `forward(x)` gives what the spec promises
(probabilities when the model ends in Sigmoid/Softmax), so a module from `to_torch()`
works like any other. The engine also calls it with `logits=True`, which stops before
the final activation when the loss is fused with it, and with `masks=`, one dropout
mask per Dropout layer, drawn by the trainer from its own generator so that seeded
runs repeat exactly and no global random state is touched, and with `tape=`, a list
that receives each Dense and Convolution layer's (layer, input, pre-activation): what
layer-wise clipping (`veil.engine._layerwise`) needs to get per-example gradients
from one ordinary backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvModule",
    "Tape",
    "DenseModule",
    "DropoutModule",
    "NormalizationModule",
    "RescalingModule",
    "VeilModule",
    "activate",
]


def activate(name: str | None, x: torch.Tensor) -> torch.Tensor:
    if name is None:
        return x
    if name == "relu":
        return F.relu(x)
    if name == "leaky_relu":
        return F.leaky_relu(x, 0.01)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "softmax":
        return torch.softmax(x, dim=1)
    raise ValueError(f"unknown activation {name!r}")


class DenseModule(nn.Linear):
    """`nn.Linear` followed by an optional activation (kept so names stay `<i>.weight`)."""

    def __init__(self, in_features: int, units: int, activation: str | None) -> None:
        super().__init__(in_features, units, device="meta")
        self.activation = activation

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate(self.activation, self.pre_activation(x))


class ConvModule(nn.Conv2d):
    """`nn.Conv2d` followed by an optional activation."""

    def __init__(
        self,
        channels: int,
        filters: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        activation: str | None,
    ) -> None:
        super().__init__(channels, filters, kernel_size, stride, padding, device="meta")
        self.activation = activation

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate(self.activation, self.pre_activation(x))


class DropoutModule(nn.Module):
    """Dropout that applies a given per-example mask, or `F.dropout` when none is given."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            return x * mask
        return F.dropout(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class RescalingModule(nn.Module):
    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


def _per_channel(value: float | Sequence[float], rank: int) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if tensor.ndim == 0:
        return tensor
    return tensor.reshape(1, -1, *([1] * (rank - 2)))


class NormalizationModule(nn.Module):
    """`(x - mean) / std` with constants from the spec (not saved in the state dict)."""

    def __init__(
        self, mean: float | Sequence[float], std: float | Sequence[float], rank: int
    ) -> None:
        super().__init__()
        self.register_buffer("mean", _per_channel(mean, rank), persistent=False)
        self.register_buffer("std", _per_channel(std, rank), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


_FINAL = (nn.Sigmoid, nn.Softmax)

# (layer, its input, its pre-activation output), one per Dense / Convolution layer run
Tape = list[tuple["DenseModule | ConvModule", torch.Tensor, torch.Tensor]]


class VeilModule(nn.Module):
    """The layers of a spec in order; parameters are named `<layer index>.weight`."""

    def __init__(self, layers: Sequence[nn.Module], *, fused: bool) -> None:
        super().__init__()
        for index, layer in enumerate(layers):
            self.add_module(str(index), layer)
        self.fused = fused

    def forward(
        self,
        x: torch.Tensor,
        masks: Sequence[torch.Tensor] | None = None,
        logits: bool = False,
        tape: Tape | None = None,
    ) -> torch.Tensor:
        layers = list(self.children())
        pending = iter(masks) if masks is not None else None
        for index, layer in enumerate(layers):
            last = logits and self.fused and index == len(layers) - 1
            if last and isinstance(layer, _FINAL):
                return x
            if isinstance(layer, DenseModule | ConvModule):
                z = layer.pre_activation(x)
                if tape is not None:
                    tape.append((layer, x, z))
                if last:
                    return z
                x = activate(layer.activation, z)
            elif isinstance(layer, DropoutModule):
                x = layer(x, None if pending is None else next(pending))
            else:
                x = layer(x)
        return x
