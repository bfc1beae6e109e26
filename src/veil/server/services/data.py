"""Pair a features pointer with a labels pointer: the rows a job or a step reads, and
what public facts alone say about whether a model can train on them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from veil._exceptions import ValidationError
from veil.engine import check_shapes
from veil.nn import BinaryCrossEntropy, CrossEntropy, ModelSpec
from veil.server.db.tables.accounts import UserRow
from veil.server.services.datasets import ResolvedPointer, resolve_pointer
from veil.server.services.units import Units, dataset_units
from veil.server.storage.arrays import ArrayStore

__all__ = ["Pair", "check_public", "resolve_pair", "select_rows", "split_rows"]


@dataclass(frozen=True)
class Pair:
    """x and y over the same rows of one dataset (the cart's data source)."""

    key: str
    x: ResolvedPointer
    y: ResolvedPointer
    units: Units  # the dataset's privacy unit: its rows or its data subjects

    @property
    def rows(self) -> np.ndarray:
        return self.x.rows

    @property
    def n_asset_rows(self) -> int:
        return self.x.n_asset_rows


def split_rows(rows: np.ndarray, validation_split: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, held out): the last `validation_split` of the rows are held out, as in Keras."""
    if not isinstance(validation_split, int | float) or not 0 <= validation_split < 1:
        raise ValidationError(
            f"validation_split must be in [0, 1). Received: validation_split={validation_split!r}"
        )
    cut = len(rows) - int(np.floor(len(rows) * validation_split))
    if cut < 1:
        raise ValidationError(
            f"validation_split={validation_split} leaves no rows to train on of {len(rows)}."
        )
    return rows[:cut], rows[cut:]


def select_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`array[rows]`, as a memory-mapped view when the rows are a slice (no copy)."""
    if len(rows) > 1:
        steps = np.diff(rows)
        if steps[0] > 0 and np.all(steps == steps[0]):
            return array[int(rows[0]) : int(rows[-1]) + 1 : int(steps[0])]
    elif len(rows) == 1:
        return array[int(rows[0]) : int(rows[0]) + 1]
    return array[rows]


def resolve_pair(
    session: Session,
    arrays: ArrayStore,
    *,
    user: UserRow,
    x_id: str,
    y_id: str,
    x_rows: slice | None = None,
    y_rows: slice | None = None,
) -> Pair:
    """x and y, each the pointer's rows or, given `x_rows` (`y_rows`), `x[x_rows]` as
    slicing the pointer would select them."""
    x = resolve_pointer(session, arrays, user=user, pointer_id=x_id, within=x_rows, known=True)
    y = resolve_pointer(session, arrays, user=user, pointer_id=y_id, within=y_rows, known=True)
    if len(x.rows) != len(y.rows):
        raise ValidationError(
            f"x and y must have the same number of rows. Received: x has {len(x.rows)} "
            f"rows ({x.asset_name}), y has {len(y.rows)} rows ({y.asset_name})",
            x_rows=len(x.rows),
            y_rows=len(y.rows),
        )
    if x.dataset_id != y.dataset_id or not np.array_equal(x.rows, y.rows):
        raise ValidationError(
            "x and y must select the same rows of one dataset (row i of x is the record "
            f"of row i of y). Received: x = {x.asset_name} of dataset {x.dataset_id}, "
            f"y = {y.asset_name} of dataset {y.dataset_id}, with different rows"
        )
    if len(x.rows) == 0:
        raise ValidationError("x and y select no rows. Received: an empty slice")
    return Pair(key=x.dataset_id, x=x, y=y, units=dataset_units(session, arrays, x.dataset_id))


def _label_range(spec: ModelSpec) -> tuple[float, float] | None:
    if isinstance(spec.loss, CrossEntropy):
        return (0.0, float(spec.output_shape[1] - 1))  # type: ignore[operator]
    if isinstance(spec.loss, BinaryCrossEntropy):
        return (0.0, 1.0)
    return None


def check_public(spec: ModelSpec, pair: Pair) -> None:
    """Refuse what public facts alone show cannot work: dtypes and shapes against the
    model, and labels declared (by the owner's bounds) outside what the loss takes.

    Reads no private value, so a data scientist learns nothing from its answer. A row
    whose actual label does not fit is not refused: training gives it a fixed
    contribution (see `veil.engine`).
    """
    check_shapes(spec, pair.x.array[:0], pair.y.array[:0])
    expected = _label_range(spec)
    if expected is None or pair.y.bounds is None:
        return
    low, high = pair.y.bounds.overall
    if low < expected[0] or high > expected[1]:
        raise ValidationError(
            f"{spec.loss.name} on output {list(spec.output_shape)} expects labels in "
            f"[{expected[0]:g}, {expected[1]:g}]. Received: {pair.y.asset_name!r}, declared "
            f"by its owner with bounds [{low:g}, {high:g}]",
            expected=list(expected),
            declared=[low, high],
        )
