"""`build_module`: a spec into a `VeilModule`, from the whitelist only."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

import torch
from torch import nn

from veil._exceptions import SpecError
from veil.engine._modules import (
    ConvModule,
    DenseModule,
    DropoutModule,
    NormalizationModule,
    RescalingModule,
    VeilModule,
)
from veil.nn import (
    AvgPool,
    BinaryCrossEntropy,
    Convolution,
    CrossEntropy,
    Dense,
    Dropout,
    Flatten,
    GroupNorm,
    Layer,
    LeakyReLU,
    MaxPool,
    ModelSpec,
    Normalization,
    ReLU,
    Rescaling,
    Shape,
    Sigmoid,
    Softmax,
    Tanh,
    final_activation,
)

__all__ = ["build_module", "is_fused"]


def _conv(layer: Convolution, shape: Shape) -> nn.Module:
    return ConvModule(
        int(shape[1]),  # type: ignore[arg-type]
        layer.filters,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.activation,
    )


def _dense(layer: Dense, shape: Shape) -> nn.Module:
    return DenseModule(int(shape[1]), layer.units, layer.activation)  # type: ignore[arg-type]


def _group_norm(layer: GroupNorm, shape: Shape) -> nn.Module:
    return nn.GroupNorm(layer.groups, int(shape[1]), device="meta")  # type: ignore[arg-type]


_BUILDERS: dict[type[Layer], Callable[[Layer, Shape], nn.Module]] = {
    Convolution: _conv,  # type: ignore[dict-item]
    Dense: _dense,  # type: ignore[dict-item]
    GroupNorm: _group_norm,  # type: ignore[dict-item]
    MaxPool: lambda layer, _: nn.MaxPool2d(layer.pool_size, layer.strides),  # type: ignore[attr-defined]
    AvgPool: lambda layer, _: nn.AvgPool2d(layer.pool_size, layer.strides),  # type: ignore[attr-defined]
    Flatten: lambda layer, _: nn.Flatten(),
    ReLU: lambda layer, _: nn.ReLU(),
    LeakyReLU: lambda layer, _: nn.LeakyReLU(layer.slope),  # type: ignore[attr-defined]
    Sigmoid: lambda layer, _: nn.Sigmoid(),
    Tanh: lambda layer, _: nn.Tanh(),
    Softmax: lambda layer, _: nn.Softmax(dim=1),
    Dropout: lambda layer, _: DropoutModule(layer.rate),  # type: ignore[attr-defined]
    Rescaling: lambda layer, _: RescalingModule(layer.scale, layer.offset),  # type: ignore[attr-defined]
    Normalization: lambda layer, shape: NormalizationModule(
        layer.mean,  # type: ignore[attr-defined]
        layer.std,  # type: ignore[attr-defined]
        len(shape),
    ),
}


def is_fused(spec: ModelSpec) -> bool:
    """True when the loss is computed on the pre-activation (stable log-sum-exp)."""
    last = final_activation(spec.layers)
    return (last == "sigmoid" and isinstance(spec.loss, BinaryCrossEntropy)) or (
        last == "softmax" and isinstance(spec.loss, CrossEntropy)
    )


def _initialise(module: nn.Module, generator: torch.Generator) -> None:
    """torch's default initialisation, drawn from `generator` instead of the global RNG."""
    module.to_empty(device="cpu", recurse=False)
    if isinstance(module, nn.GroupNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
        return
    assert isinstance(module, nn.Linear | nn.Conv2d)
    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(module.weight[0].numel())
    nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def build_module(spec: ModelSpec, *, generator: torch.Generator | None = None) -> VeilModule:
    """The spec's layers as a CPU `VeilModule`; weights drawn from `generator`
    (a securely seeded one when None)."""
    if generator is None:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
    layers = []
    shape = spec.input_shape
    for index, (layer, out) in enumerate(zip(spec.layers, spec.shapes, strict=True)):
        builder = _BUILDERS.get(type(layer))
        if builder is None:
            raise SpecError(f"Layer {index} ({layer.name}) is not in the whitelist")
        module = builder(layer, shape)
        if isinstance(module, nn.Linear | nn.Conv2d | nn.GroupNorm):
            _initialise(module, generator)
        layers.append(module)
        shape = out
    return VeilModule(layers, fused=is_fused(spec))
