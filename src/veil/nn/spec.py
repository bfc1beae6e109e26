"""`ModelSpec`: the JSON document that describes a model to the node.

```
{"format": 1,
 "input_shape": [null, 1, 28, 28],
 "layers": [{"class_name": "Convolution", "config": {"filters": 1, ...}}, ...],
 "loss": {"class_name": "BinaryCrossEntropy", "config": {}},
 "optimizer": {"class_name": "Adamax", "config": {"lr": 0.002}},
 "noise_multiplier": 1.0,
 "max_grad_norm": 1.0,
 "loss_bound": 10.0}
```
It is JSON only (never pickle) and built from the whitelists alone. `loss`, `optimizer`
and `loss_bound` may be absent or null: the loss is then inferred from the last layer
(Sigmoid -> BinaryCrossEntropy, Softmax -> CrossEntropy, otherwise MeanSquaredError),
the optimizer is `Adamax()`, and `loss_bound` is `DEFAULT_LOSS_BOUND` (10.0, for every
loss, MeanSquaredError included). Per-example losses are clipped to [0, loss_bound]
wherever a loss is reported, which gives a released mean loss the sensitivity
loss_bound / n. `noise_multiplier` (in [0.3, 1000], the noise the node allows) and
`max_grad_norm` are required: DP-SGD cannot be switched off. `max_grad_norm` and
`loss_bound` are in [`MIN_BOUND`, `MAX_BOUND`]: a smaller one would make the noise std
(sigma times it, over a batch) a number floating point cannot hold (float32 flushes
what is under 1.2e-38 to zero), and a release without noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from veil._exceptions import SpecError
from veil.nn._config import Shape, check_input_shape, format_shape
from veil.nn.layers import Layer, final_activation, layer_from_dict, layer_to_dict
from veil.nn.losses import CrossEntropy, Loss, infer_loss, loss_from_dict, loss_to_dict
from veil.nn.optimizers import Adamax, Optimizer, optimizer_from_dict, optimizer_to_dict
from veil.privacy.calibration import SIGMA_MAX, SIGMA_MIN

__all__ = [
    "DEFAULT_LOSS_BOUND",
    "MAX_BOUND",
    "MAX_ROW_TOTAL",
    "MAX_ROW_VALUES",
    "MIN_BOUND",
    "MAX_LAYERS",
    "SPEC_FORMAT",
    "ModelSpec",
    "Shape",
    "format_shape",
    "layer_output_shape",
]

SPEC_FORMAT = 1
DEFAULT_LOSS_BOUND = 10.0
MAX_LAYERS = 256
# Bounds are public numbers a release multiplies noise by: kept where float64 stays exact
# enough and a noised value can never overflow.
MAX_BOUND = 1e6
MIN_BOUND = 1e-6
MAX_ROW_VALUES = 1 << 22  # what one layer may output for one row
MAX_ROW_TOTAL = 1 << 24  # what the input and all layers hold for one row, together

_REQUIRED = ("format", "input_shape", "layers", "noise_multiplier", "max_grad_norm")
_OPTIONAL = ("loss", "optimizer", "loss_bound")


def layer_output_shape(
    index: int, layer: Layer, shape: Shape, *, previous: Layer | None = None
) -> Shape:
    """The shape `layer` (at position `index`, after `previous`) gives for `shape`;
    SpecError naming the layer, the one before it, and the shapes otherwise."""
    where = f"Layer {index} ({layer.name})"
    if previous is not None:
        where += f" after layer {index - 1} ({previous.name})"
    detail = {"layer_index": index, "layer": layer.name, "input_shape": list(shape)}
    if index > 0 and layer.input_shape is not None and layer.input_shape != shape:
        raise SpecError(
            f"{where} was given input_shape={format_shape(layer.input_shape)} but receives "
            f"{format_shape(shape)}",
            **detail,
        )
    try:
        return layer.compute_output_shape(shape)
    except SpecError as err:
        raise SpecError(f"{where}: {err.message}", **detail) from None


def _in_range(name: str, value: object, low: float, high: float, why: str = "") -> float:
    """A finite number in (0, high] that is also >= low (low > 0 closes the range)."""
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (isinstance(value, int) or math.isfinite(value))  # an int may pass float's range
        and value > 0
        and low <= value <= high
    ):
        return float(value)
    lowest = f">= {low:g}" if low > 0 else "> 0"
    raise SpecError(
        f"ModelSpec expects {name} of a finite number {lowest} and <= {high:g}{why}. "
        f"Received: {name}={value!r}"
    )


_NO_OFF = " (DP-SGD cannot be switched off)"


@dataclass(frozen=True)
class ModelSpec:
    """A checked model: layers whose shapes fit, a loss, an optimizer, DP parameters.

    Build one with `ModelSpec.build(...)` (fills the defaults) or `ModelSpec.from_dict`.
    Every instance is valid: the checks run in `__post_init__`.
    """

    input_shape: Shape
    layers: tuple[Layer, ...]
    loss: Loss
    optimizer: Optimizer
    noise_multiplier: float
    max_grad_norm: float
    loss_bound: float
    shapes: tuple[Shape, ...] = field(init=False, repr=False, compare=False)
    param_count: int = field(init=False, repr=False, compare=False)
    flops_per_example: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        input_shape = check_input_shape("ModelSpec", self.input_shape)
        if input_shape is None:
            raise SpecError(
                "ModelSpec expects an input_shape such as (None, 1, 28, 28). "
                "Received: input_shape=None"
            )
        layers = tuple(self.layers)
        if not layers or len(layers) > MAX_LAYERS:
            raise SpecError(
                f"ModelSpec expects 1 to {MAX_LAYERS} layers. Received: {len(layers)} layers"
            )
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise SpecError(
                    f"ModelSpec expects veil.nn layers. Received at index {i}: "
                    f"{type(layer).__name__}"
                )
        if not isinstance(self.loss, Loss) or not isinstance(self.optimizer, Optimizer):
            raise SpecError(
                "ModelSpec expects a veil.nn loss and optimizer. Received: "
                f"loss={self.loss!r}, optimizer={self.optimizer!r}"
            )
        if layers[0].input_shape is not None and layers[0].input_shape != input_shape:
            raise SpecError(
                f"Layer 0 ({layers[0].name}) was given input_shape="
                f"{format_shape(layers[0].input_shape)} but the model input_shape is "
                f"{format_shape(input_shape)}"
            )
        shapes, params, flops = [], 0, 0
        shape = input_shape
        total = math.prod(int(d) for d in shape[1:])  # type: ignore[misc]
        for i, layer in enumerate(layers):
            out = layer_output_shape(i, layer, shape, previous=layers[i - 1] if i else None)
            params += layer.count_params(shape)
            flops += layer.flops(shape)
            if math.prod(int(d) for d in out[1:]) > MAX_ROW_VALUES:  # type: ignore[misc]
                raise SpecError(
                    f"Layer {i} ({layer.name}) may output at most {MAX_ROW_VALUES:,} values per "
                    f"row ({MAX_ROW_VALUES * 4 // 2**20} MiB as float32): training holds a "
                    f"chunk of rows' outputs in memory. Received: {format_shape(out)}"
                )
            total += math.prod(int(d) for d in out[1:])  # type: ignore[misc]
            shapes.append(out)
            shape = out
        if total > MAX_ROW_TOTAL:
            raise SpecError(
                f"A model may hold at most {MAX_ROW_TOTAL:,} values per row over its input and "
                f"all its layers' outputs ({MAX_ROW_TOTAL * 4 // 2**20} MiB as float32): "
                f"training keeps them all for the backward pass, one row at least at a time. "
                f"Received: {total:,} values over {len(layers)} layers",
                max_values=MAX_ROW_TOTAL,
                values=total,
            )
        if params == 0:
            raise SpecError(
                "ModelSpec expects at least one layer with trainable parameters "
                "(Dense, Convolution or GroupNorm). Received: 0 parameters"
            )
        if isinstance(self.loss, CrossEntropy) and (len(shape) != 2 or shape[1] < 2):  # type: ignore[operator]
            raise SpecError(
                "CrossEntropy expects the model output (None, classes) with classes >= 2. "
                f"Received: output shape {format_shape(shape)}"
            )
        set_ = object.__setattr__
        set_(self, "input_shape", input_shape)
        set_(self, "layers", layers)
        noise = _in_range("noise_multiplier", self.noise_multiplier, SIGMA_MIN, SIGMA_MAX, _NO_OFF)
        set_(self, "noise_multiplier", noise)
        clip = _in_range("max_grad_norm", self.max_grad_norm, MIN_BOUND, MAX_BOUND, _NO_OFF)
        set_(self, "max_grad_norm", clip)
        bound = _in_range("loss_bound", self.loss_bound, MIN_BOUND, MAX_BOUND)
        set_(self, "loss_bound", bound)
        set_(self, "shapes", tuple(shapes))
        set_(self, "param_count", params)
        set_(self, "flops_per_example", flops)

    @classmethod
    def build(
        cls,
        input_shape: Sequence[int | None],
        layers: Sequence[Layer],
        *,
        loss: Loss | None = None,
        optimizer: Optimizer | None = None,
        noise_multiplier: float = 1.0,
        max_grad_norm: float = 1.0,
        loss_bound: float | None = None,
    ) -> ModelSpec:
        """A spec with the defaults filled in (inferred loss, `Adamax()`, bound 10.0)."""
        return cls(
            input_shape=tuple(input_shape),
            layers=tuple(layers),
            loss=infer_loss(layers) if loss is None else loss,
            optimizer=Adamax() if optimizer is None else optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            loss_bound=DEFAULT_LOSS_BOUND if loss_bound is None else loss_bound,
        )

    @property
    def output_shape(self) -> Shape:
        return self.shapes[-1]

    @property
    def output_range(self) -> tuple[float, float] | None:
        """Where every output value lies, when the last activation bounds it."""
        return {"sigmoid": (0.0, 1.0), "softmax": (0.0, 1.0), "tanh": (-1.0, 1.0)}.get(
            final_activation(self.layers) or ""
        )

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        max_params: int | None = None,
        max_flops: int | None = None,
    ) -> ModelSpec:
        """Parse and check a spec dict strictly; `max_params`/`max_flops` cap its size."""
        if not isinstance(data, Mapping):
            raise SpecError(f"A model spec is a JSON object. Received: {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in _REQUIRED + _OPTIONAL)
        missing = [k for k in _REQUIRED if k not in data]
        if unknown or missing:
            raise SpecError(
                f"A model spec has keys {list(_REQUIRED)} and optionally {list(_OPTIONAL)}. "
                f"Received: unknown keys {unknown}, missing keys {missing}"
            )
        fmt = data["format"]
        if fmt != SPEC_FORMAT or isinstance(fmt, bool) or not isinstance(fmt, int):
            raise SpecError(f"A model spec has format {SPEC_FORMAT}. Received: format={fmt!r}")
        raw_layers = data["layers"]
        if not isinstance(raw_layers, list) or not 1 <= len(raw_layers) <= MAX_LAYERS:
            count = len(raw_layers) if isinstance(raw_layers, list) else type(raw_layers).__name__
            raise SpecError(
                f"A model spec has a list of 1 to {MAX_LAYERS} layers. Received: layers={count}"
            )
        layers = []
        for i, item in enumerate(raw_layers):
            try:
                layers.append(layer_from_dict(item))
            except SpecError as err:
                raise SpecError(f"layers[{i}]: {err.message}", layer_index=i) from None
        loss = data.get("loss")
        optimizer = data.get("optimizer")
        spec = cls.build(
            data["input_shape"],
            layers,
            loss=None if loss is None else loss_from_dict(loss),
            optimizer=None if optimizer is None else optimizer_from_dict(optimizer),
            noise_multiplier=data["noise_multiplier"],
            max_grad_norm=data["max_grad_norm"],
            loss_bound=data.get("loss_bound"),
        )
        spec.check_limits(max_params=max_params, max_flops=max_flops)
        return spec

    def check_limits(self, *, max_params: int | None = None, max_flops: int | None = None) -> None:
        """SpecError when the model has more parameters or per-example FLOPs than allowed."""
        if max_params is not None and self.param_count > max_params:
            raise SpecError(
                f"This node accepts models of at most {max_params:,} parameters. "
                f"Received: {self.param_count:,} parameters",
                max_params=max_params,
                param_count=self.param_count,
            )
        if max_flops is not None and self.flops_per_example > max_flops:
            raise SpecError(
                f"This node accepts models of at most {max_flops:,} FLOPs per example. "
                f"Received: {self.flops_per_example:,} FLOPs per example",
                max_flops=max_flops,
                flops_per_example=self.flops_per_example,
            )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready spec dict; `ModelSpec.from_dict(s.to_dict()) == s`."""
        return {
            "format": SPEC_FORMAT,
            "input_shape": list(self.input_shape),
            "layers": [layer_to_dict(layer) for layer in self.layers],
            "loss": loss_to_dict(self.loss),
            "optimizer": optimizer_to_dict(self.optimizer),
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "loss_bound": self.loss_bound,
        }
