"""Input checks before any training, and batches gathered by index.

Errors say what was expected and what arrived, but never show a private value or
row: the node sends these messages to the data scientist. Arrays are scanned in
chunks, so a memory-mapped asset is never loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from veil._exceptions import ValidationError
from veil.engine._objective import Objective
from veil.nn import BinaryCrossEntropy, CrossEntropy, ModelSpec, format_shape

__all__ = ["check_data", "check_rows", "input_tensor", "target_tensor"]

_CHUNK_BYTES = 1 << 24


def _chunks(array: np.ndarray) -> Iterator[np.ndarray]:
    row_bytes = max(1, array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, array.shape[0], step):
        yield np.asarray(array[start : start + step])


def _numeric(name: str, array: object) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        what = type(array).__name__ if not isinstance(array, np.ndarray) else array.dtype
        raise ValidationError(
            f"Expected {name} as a numeric numpy array (bool, int, uint or float). "
            f"Received: {what}",
            expected="numeric numpy array",
            received=str(what),
        )
    if array.ndim == 0:
        raise ValidationError(f"Expected {name} with a row axis. Received: a scalar")
    return array


def _all_finite(array: np.ndarray) -> bool:
    if array.dtype.kind != "f":
        return True
    return all(bool(np.isfinite(block).all()) for block in _chunks(array))


def _check_x(spec: ModelSpec, x: object) -> np.ndarray:
    x = _numeric("x", x)
    expected = spec.input_shape[1:]
    if x.shape[1:] != expected:
        hint = ""
        if x.ndim == 4 and len(expected) == 3 and x.shape[1:] == (*expected[1:], expected[0]):
            hint = " (images are NCHW: channels first; use x.transpose(0, 3, 1, 2))"
        raise ValidationError(
            f"Expected x of shape (N, {', '.join(map(str, expected))}) to match the model's "
            f"input_shape {format_shape(spec.input_shape)}{hint}. "
            f"Received: x.shape={tuple(x.shape)}",
            expected=list(spec.input_shape),
            received=list(x.shape),
        )
    if not _all_finite(x):
        raise ValidationError(
            "Expected x without NaN or infinite values. Received: x contains some "
            "(which rows is not shown: the data is private)"
        )
    return x


def _label_shapes(spec: ModelSpec) -> list[tuple[int, ...]]:
    """Per-row label shapes the loss accepts."""
    if isinstance(spec.loss, CrossEntropy):
        return [(), (1,)]
    out = tuple(int(d) for d in spec.output_shape[1:])  # type: ignore[arg-type]
    return [out, ()] if out == (1,) else [out]


def _check_y(spec: ModelSpec, y: object, rows: int) -> None:
    y = _numeric("y", y)
    if y.shape[0] != rows:
        raise ValidationError(
            f"Expected x and y with the same number of rows. Received: x has {rows} rows, "
            f"y has {y.shape[0]}",
            expected=rows,
            received=int(y.shape[0]),
        )
    allowed = _label_shapes(spec)
    if y.shape[1:] not in allowed:
        shapes = " or ".join(format_shape((None, *s)).replace("None", "N") for s in allowed)
        raise ValidationError(
            f"Expected y of shape {shapes} for {spec.loss.name} on output "
            f"{format_shape(spec.output_shape)}. Received: y.shape={tuple(y.shape)}",
            expected=[list(s) for s in allowed],
            received=list(y.shape),
        )
    if isinstance(spec.loss, CrossEntropy):
        classes = int(spec.output_shape[1])  # type: ignore[arg-type]
        for block in _chunks(y):
            if block.dtype.kind == "f" and not (
                np.isfinite(block).all() and (block == np.floor(block)).all()
            ):
                raise ValidationError(
                    f"CrossEntropy expects integer class labels in [0, {classes}). "
                    f"Received: y ({y.dtype}) with non-integer or non-finite values"
                )
            if block.size and (block.min() < 0 or block.max() >= classes):
                raise ValidationError(
                    f"CrossEntropy expects integer class labels in [0, {classes}). "
                    "Received: labels outside that range (values not shown: private data)"
                )
    elif isinstance(spec.loss, BinaryCrossEntropy):
        for block in _chunks(y):
            if not np.isin(block, (0, 1)).all():
                raise ValidationError(
                    "BinaryCrossEntropy expects labels in {0, 1}. Received: other values "
                    "(not shown: private data)"
                )
    elif not _all_finite(y):
        raise ValidationError(
            "Expected y without NaN or infinite values. Received: y contains some "
            "(which rows is not shown: the data is private)"
        )


def check_data(spec: ModelSpec, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """ValidationError unless x (and y) fit the spec: shapes, rows, finite values, labels.

    Integer inputs (uint8 images) are accepted and cast to float32 per batch.
    CrossEntropy labels: ints in [0, classes), shape (N,) or (N, 1). BinaryCrossEntropy
    labels: 0 or 1, shaped as the output, or (N,) for a `(None, 1)` output.
    """
    x = _check_x(spec, x)
    if y is not None:
        _check_y(spec, y, int(x.shape[0]))


def check_rows(name: str, rows: object, n: int) -> np.ndarray:
    """Sorted unique int64 row indices in [0, n); ValidationError otherwise."""
    array = np.asarray(rows)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValidationError(
            f"Expected {name} as a 1-D array of row indices. Received: shape "
            f"{array.shape}, dtype {array.dtype}"
        )
    array = np.sort(array.astype(np.int64))
    if array.size and (array[0] < 0 or array[-1] >= n):
        raise ValidationError(f"Expected {name} in [0, {n}). Received: indices outside it")
    if array.size > 1 and (np.diff(array) == 0).any():
        raise ValidationError(
            f"Expected {name} without repeats (a repeated row would be sampled more "
            "often than the accounting assumes). Received: repeated indices"
        )
    return array


def input_tensor(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(batch, dtype=np.float32), device=device)


def target_tensor(
    objective: Objective, spec: ModelSpec, batch: np.ndarray, device: torch.device
) -> torch.Tensor:
    if objective.kind == "ce":
        return torch.as_tensor(np.asarray(batch).reshape(-1).astype(np.int64), device=device)
    out = tuple(int(d) for d in spec.output_shape[1:])  # type: ignore[arg-type]
    values = np.asarray(batch, dtype=np.float32).reshape(-1, *out)
    return torch.as_tensor(values, device=device)
