"""`Model`: the Keras-style model a data scientist builds, locally or on a node.

Three ways to use it (see DESIGN.md):

* local: `Model()`, `add(...)`, `compile()`; `fit` runs the node's own DP-SGD engine
  on numpy arrays (mock data), `predict`/`evaluate` run locally. Your arrays are
  checked value by value first, so a NaN or a label out of range is named.
* flow II: `Model()`, `add(...)`, `compile(to=client)` sends `to_spec()` with
  `client.models.create(spec)` and returns the pointer it answers.
* flow I: `Model(to=client)` opens a draft with `client.models.create_draft()`;
  each `add` is checked locally, then sent with `draft.add(layer_dict)`, and
  `compile()` calls `draft.compile(...)` and returns the pointer.

Published weights come back with `set_weights(...)`, after which `predict` runs locally.
torch is imported only when a model is built locally.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from veil._exceptions import SpecError, ValidationError
from veil.nn._config import Shape, format_shape
from veil.nn.layers import Layer, layer_to_dict
from veil.nn.losses import Loss, loss_to_dict
from veil.nn.optimizers import Optimizer, optimizer_to_dict
from veil.nn.spec import ModelSpec, layer_output_shape

if TYPE_CHECKING:
    import torch

    from veil.engine import DPTrainer, FitResult

__all__ = ["Model"]

# The pointer a node answers `compile(to=...)` with is the client's class; veil.nn
# must not import the client (the spec has to stay free of HTTP), so it is untyped here.
ModelPointer = Any


class Model:
    """A sequence of whitelisted layers; shapes are checked as layers are added."""

    def __init__(self, to: Any = None) -> None:
        self._layers: list[Layer] = []
        self._shapes: list[Shape] = []
        self._input_shape: Shape | None = None
        self._node = to
        self._draft = None if to is None else to.models.create_draft()
        self._spec: ModelSpec | None = None
        self._trainer: DPTrainer | None = None

    @property
    def layers(self) -> tuple[Layer, ...]:
        return tuple(self._layers)

    @property
    def input_shape(self) -> Shape | None:
        return self._input_shape

    @property
    def output_shape(self) -> Shape | None:
        return self._shapes[-1] if self._shapes else self._input_shape

    @property
    def spec(self) -> ModelSpec | None:
        """The spec of the last `compile()` (or `from_spec`), None before."""
        return self._spec

    def add(self, layer: Layer) -> None:
        """Append a layer; SpecError at once (layer index, name, shapes) if it does not fit."""
        if not isinstance(layer, Layer):
            raise SpecError(f"Model.add expects a veil.nn layer. Received: {type(layer).__name__}")
        index = len(self._layers)
        if index == 0:
            if layer.input_shape is None:
                raise SpecError(
                    "The first layer needs input_shape, e.g. Convolution(1, (3, 3), "
                    f"input_shape=(None, 1, 28, 28)). Received: {layer!r}"
                )
            shape = layer_output_shape(0, layer, layer.input_shape)
        else:
            shape = layer_output_shape(index, layer, self._shapes[-1], previous=self._layers[-1])
        if self._draft is not None:
            answered = self._draft.add(layer_to_dict(layer))
            if answered is not None and tuple(answered) != shape:
                raise SpecError(
                    f"Layer {index} ({layer.name}): the node computed output shape "
                    f"{format_shape(answered)}, this client {format_shape(shape)}; "
                    "the client and node versions disagree"
                )
        if index == 0:
            self._input_shape = layer.input_shape
        self._layers.append(layer)
        self._shapes.append(shape)

    def summary(self) -> str:
        """Print and return a table: layer, output shape, parameters."""
        rows = [("#", "Layer (type)", "Output Shape", "Param #")]
        total = 0
        shape_in = self._input_shape
        for i, (layer, out) in enumerate(zip(self._layers, self._shapes, strict=True)):
            assert shape_in is not None
            params = layer.count_params(shape_in)
            total += params
            rows.append((str(i), layer.name, format_shape(out), f"{params:,}"))
            shape_in = out
        widths = [max(len(row[c]) for row in rows) for c in range(4)]
        line = "  ".join("-" * w for w in widths)

        def fmt(row: tuple[str, ...]) -> str:
            cells = [row[0].rjust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2])]
            return "  ".join([*cells, row[3].rjust(widths[3])]).rstrip()

        where = "local" if self._node is None else "remote draft"
        shown_input = "unset" if self._input_shape is None else format_shape(self._input_shape)
        text = "\n".join(
            [
                f"Model ({where}), input {shown_input}",
                fmt(rows[0]),
                line,
                *(fmt(r) for r in rows[1:]),
                line,
                f"Total params: {total:,}",
            ]
        )
        print(text)
        return text

    def _make_spec(
        self,
        loss: Loss | None,
        optimizer: Optimizer | None,
        noise_multiplier: float | None,
        max_grad_norm: float | None,
        loss_bound: float | None,
    ) -> ModelSpec:
        if self._input_shape is None:
            raise SpecError("A model needs at least one layer before compile. Received: 0 layers")
        last = self._spec
        return ModelSpec.build(
            self._input_shape,
            self._layers,
            loss=loss if loss is not None or last is None else last.loss,
            optimizer=optimizer if optimizer is not None or last is None else last.optimizer,
            noise_multiplier=_pick(noise_multiplier, last and last.noise_multiplier, 1.0),
            max_grad_norm=_pick(max_grad_norm, last and last.max_grad_norm, 1.0),
            loss_bound=loss_bound if loss_bound is not None or last is None else last.loss_bound,
        )

    def to_spec(
        self,
        loss: Loss | None = None,
        optimizer: Optimizer | None = None,
        noise_multiplier: float | None = None,
        max_grad_norm: float | None = None,
        loss_bound: float | None = None,
    ) -> dict[str, Any]:
        """The JSON spec dict. Arguments left None come from the last compile (or
        `from_spec`), else the defaults: inferred loss, `Adamax()`, 1.0, 1.0, 10.0."""
        return self._make_spec(
            loss, optimizer, noise_multiplier, max_grad_norm, loss_bound
        ).to_dict()

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | ModelSpec) -> Model:
        """A local model from a spec dict; `Model.from_spec(d).to_spec()` gives `d` back."""
        parsed = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)
        model = cls()
        model._input_shape = parsed.input_shape
        model._layers = list(parsed.layers)
        model._shapes = list(parsed.shapes)
        model._spec = parsed
        return model

    def compile(
        self,
        to: Any = None,
        loss: Loss | None = None,
        optimizer: Optimizer | None = None,
        noise_multiplier: float = 1.0,
        max_grad_norm: float = 1.0,
        loss_bound: float | None = None,
    ) -> ModelPointer | None:
        """Fix loss, optimizer and DP parameters.

        Local (`to=None`, no draft): builds the torch module; returns None. Remote:
        returns the node's model pointer. Without a loss, the last layer decides:
        Sigmoid -> BinaryCrossEntropy, Softmax -> CrossEntropy, else MeanSquaredError.
        """
        spec = self._make_spec(loss, optimizer, noise_multiplier, max_grad_norm, loss_bound)
        if self._draft is not None:
            if to is not None and to is not self._node:
                raise ValidationError(
                    "This model was opened on a node with Model(to=client); compile it with "
                    "to=None or that same client. Received: another client"
                )
            pointer = self._draft.compile(
                loss=None if loss is None else loss_to_dict(loss),
                optimizer=None if optimizer is None else optimizer_to_dict(optimizer),
                noise_multiplier=spec.noise_multiplier,
                max_grad_norm=spec.max_grad_norm,
                loss_bound=loss_bound,
            )
            self._set_spec(spec)
            return pointer
        if to is not None:
            pointer = to.models.create(spec.to_dict())
            self._set_spec(spec)
            return pointer
        self._set_spec(spec)
        self._local()
        return None

    def _set_spec(self, spec: ModelSpec) -> None:
        self._spec = spec
        self._trainer = None

    def _local(self) -> DPTrainer:
        if self._trainer is None:
            if self._spec is None:
                raise ValidationError("This model is not compiled: call compile() first")
            from veil.engine import DPTrainer

            self._trainer = DPTrainer(self._spec)
        return self._trainer

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        max_iter: int = 10,
        batch_size: int = 100,
        validation_split: float = 0.0,
        seed: int | None = None,
        verbose: bool = True,
    ) -> FitResult:
        """Train locally with the node's DP-SGD engine; `max_iter` counts epochs.

        As in Keras, `validation_split` holds out the last fraction of the rows.
        `seed` fixes sampling, dropout and noise (weights were drawn at compile).
        """
        trainer = self._local()
        x, y = np.asarray(x), np.asarray(y)
        _check_values(trainer, x, y)
        if (
            isinstance(validation_split, bool)
            or not isinstance(validation_split, int | float)
            or not 0.0 <= validation_split < 1.0
        ):
            raise ValidationError(
                "fit expects validation_split of a number in [0, 1). "
                f"Received: validation_split={validation_split!r}"
            )
        n = x.shape[0] if x.ndim else 0
        n_val = int(n * validation_split)
        if seed is not None:
            trainer.reseed(seed)

        def report(info: Any) -> None:
            parts = [f"Epoch {info.epoch}/{max_iter}"]
            if info.val_loss is not None:
                parts.append(f"val_loss: {info.val_loss:.4f}")
            if info.val_accuracy is not None:
                parts.append(f"val_accuracy: {info.val_accuracy:.4f}")
            print(" - ".join(parts))

        return trainer.fit(
            x,
            y,
            train_rows=np.arange(n - n_val),
            val_rows=np.arange(n - n_val, n) if n_val else None,
            epochs=max_iter,
            batch_size=batch_size,
            on_epoch=report if verbose else None,
        )

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Probabilities (the model's output), as the node would give them."""
        return self._local().predict(np.asarray(x), batch_size=batch_size)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
        """`{"loss": mean loss (clipped to loss_bound), "accuracy": ... or None for MSE}`."""
        trainer, x, y = self._local(), np.asarray(x), np.asarray(y)
        _check_values(trainer, x, y)
        loss, accuracy, _ = trainer.evaluate(x, y)
        return {"loss": loss, "accuracy": accuracy}

    def get_weights(self) -> dict[str, np.ndarray]:
        return self._local().get_weights()

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Load weights (e.g. published ones); names, shapes and dtypes are checked."""
        self._local().set_weights(weights)

    def to_torch(self) -> torch.nn.Module:
        """A copy of the built module, on the CPU, in eval mode; it outputs probabilities."""
        return self._local().to_torch()


def _check_values(trainer: DPTrainer, x: np.ndarray, y: np.ndarray) -> None:
    """Your own arrays may be checked value by value (the node never does that for a data
    scientist: there a row that does not fit gets a fixed contribution instead)."""
    from veil.engine import check_values

    check_values(trainer.spec, x, y)


def _pick(given: float | None, last: float | None, default: float) -> float:
    if given is not None:
        return given
    return default if last is None else last
