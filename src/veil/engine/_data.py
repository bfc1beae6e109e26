"""What may be checked about training data, and how rows that do not fit are handled.

On the node, x and y are private. Every check that can raise here (`check_shapes`,
`check_rows`) reads public facts only: shapes, dtypes, row indices and the model spec,
never a value, so its answer is the same for any private contents.

A row whose values do not fit (NaN or infinite inputs, a label outside the loss's
range) is not an error: `input_tensor` and `target_tensor` return a per-row `valid`
mask computed with the same tensor operations for every row, and the trainer gives an
invalid row a fixed contribution (a zero gradient, a NaN loss that every release turns
into its fixed fill value). Neither the answer nor the work done depends on which rows
did not fit.

`check_values` is for data the caller may see (a data scientist's own arrays, local
training): it names what is wrong. The node never calls it on private data; the owner's
upload is where the node checks private values.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from veil._exceptions import ValidationError
from veil.engine._objective import Objective
from veil.nn import BinaryCrossEntropy, CrossEntropy, ModelSpec, format_shape

__all__ = ["check_rows", "check_shapes", "check_values", "input_tensor", "target_tensor"]

_CHUNK_BYTES = 1 << 24


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
    return x


def _label_shapes(spec: ModelSpec) -> list[tuple[int, ...]]:
    """Per-row label shapes the loss accepts."""
    if isinstance(spec.loss, CrossEntropy):
        return [(), (1,)]
    out = tuple(int(d) for d in spec.output_shape[1:])  # type: ignore[arg-type]
    return [out, ()] if out == (1,) else [out]


def _check_y(spec: ModelSpec, y: object, rows: int) -> np.ndarray:
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
    return y


def check_shapes(spec: ModelSpec, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """ValidationError unless x (and y) have dtypes and shapes that fit the spec.

    Reads `.shape` and `.dtype` only, never a value. Integer inputs (uint8 images) are
    accepted and cast to float32 per batch. Labels: (N,) or (N, 1) for CrossEntropy;
    shaped as the output for the others, or (N,) for a `(None, 1)` output.
    """
    x = _check_x(spec, x)
    if y is not None:
        _check_y(spec, y, int(x.shape[0]))


def _chunks(array: np.ndarray) -> Iterator[np.ndarray]:
    row_bytes = max(1, array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, array.shape[0], step):
        yield np.asarray(array[start : start + step])


def check_values(spec: ModelSpec, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """ValidationError naming values that would be given a fixed contribution in training:
    non-finite inputs, labels outside the loss's range. For data the caller may see."""
    check_shapes(spec, x, y)
    if x.dtype.kind == "f" and not all(np.isfinite(b).all() for b in _chunks(x)):
        raise ValidationError("Expected x without NaN or infinite values. Received: some")
    if y is None:
        return
    for block in _chunks(y):
        ok = np.isfinite(block).all() if block.dtype.kind == "f" else True
        if isinstance(spec.loss, CrossEntropy):
            classes = int(spec.output_shape[1])  # type: ignore[arg-type]
            in_range = (block >= 0) & (block < classes)
            ok = ok and (block == np.floor(block)).all() and in_range.all()
            what = f"integer class labels in [0, {classes})"
        elif isinstance(spec.loss, BinaryCrossEntropy):
            ok = ok and ((block >= 0) & (block <= 1)).all()
            what = "labels in [0, 1]"
        else:
            what = "finite labels"
        if not ok:
            raise ValidationError(f"{spec.loss.name} expects {what}. Received: other values")


def row_indices(name: str, rows: object) -> np.ndarray:
    """`rows` as a 1-D int64 array, in the given order; ValidationError otherwise."""
    array = np.asarray(rows)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValidationError(
            f"Expected {name} as a 1-D array of row indices. Received: shape "
            f"{array.shape}, dtype {array.dtype}"
        )
    return array.astype(np.int64)


def check_rows(name: str, rows: object, n: int) -> np.ndarray:
    """Sorted unique int64 row indices in [0, n); ValidationError otherwise."""
    array = np.sort(row_indices(name, rows))
    if array.size and (array[0] < 0 or array[-1] >= n):
        raise ValidationError(f"Expected {name} in [0, {n}). Received: indices outside it")
    if array.size > 1 and (np.diff(array) == 0).any():
        raise ValidationError(
            f"Expected {name} without repeats (a repeated row would be sampled more "
            "often than the accounting assumes). Received: repeated indices"
        )
    return array


def _rows_all(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.ndim == 1 else mask.flatten(1).all(dim=1)


def input_tensor(batch: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x as float32 with non-finite rows zeroed, valid rows as a bool mask). Bytes
    (images) travel to an accelerator as bytes and become floats there: a quarter of the
    copy. Images on the CPU are laid out channels-last: max pooling ran 10x faster so
    than in NCHW (torch 2.13) and oneDNN convolutions take it natively; every layer
    reads a tensor by index, so the values are the same."""
    array = np.asarray(batch)
    if array.dtype == np.uint8:  # always finite: nothing to check or mask
        x = torch.from_numpy(np.ascontiguousarray(array))
        if device.type == "cpu" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # a byte copy; float keeps it
        return x.to(device).float(), torch.ones(x.shape[0], dtype=torch.bool, device=device)
    x = torch.as_tensor(np.asarray(array, dtype=np.float32), device=device)
    if x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    finite = torch.isfinite(x)
    valid = _rows_all(finite)
    return torch.where(finite, x, 0.0), valid


def target_tensor(
    objective: Objective, spec: ModelSpec, batch: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels the loss can take, valid rows): a row whose label is outside the loss's
    range gets a harmless stand-in label and `valid` False."""
    raw = torch.as_tensor(np.asarray(batch, dtype=np.float64), device=device)
    if objective.kind == "ce":
        labels = raw.reshape(-1)
        classes = int(spec.output_shape[1])  # type: ignore[arg-type]
        ok = torch.isfinite(labels) & (labels == torch.floor(labels))
        ok = ok & (labels >= 0) & (labels < classes)
        return torch.where(ok, labels, 0.0).to(torch.int64), ok
    out = tuple(int(d) for d in spec.output_shape[1:])  # type: ignore[arg-type]
    values = raw.reshape(-1, *out)
    ok = torch.isfinite(values)
    if objective.kind == "bce":
        ok = ok & (values >= 0) & (values <= 1)
    return torch.where(ok, values, 0.0).to(torch.float32), _rows_all(ok)
