"""Declaring an upload: what the owner says about each asset, and the checks on it.

All of a declaration is public (names, dtypes, shapes, bounds, mock shapes); it is
checked in full before a single byte of private data is accepted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from veil._exceptions import Conflict, ValidationError
from veil.server.db.tables.datasets import DatasetRow
from veil.server.services.bounds import Bounds
from veil.server.storage.npy import check_dtype

__all__ = [
    "ASSET_NAME",
    "check_subject",
    "declare",
    "DATASET_NAME",
    "FULL_RANGE",
    "MAX_ASSETS",
    "MAX_NDIM",
    "AssetDecl",
    "check_assets",
    "check_dataset_name",
]

DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"
ASSET_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_ASSETS = 64
MAX_NDIM = 8
# The dtypes whose mock may default to their whole range when no bounds are declared.
FULL_RANGE = {"|u1": (0.0, 255.0), "|b1": (0.0, 1.0)}


@dataclass(frozen=True)
class AssetDecl:
    """What the owner declares about one asset before sending it; all of it public."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    bounds: Bounds | None = None
    mock_shape: tuple[int, ...] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def part_shape(self, part: str) -> tuple[int, ...]:
        if part == "mock":
            assert self.mock_shape is not None
            return self.mock_shape
        return self.shape

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "bounds": None if self.bounds is None else self.bounds.to_json(),
            "mock_shape": None if self.mock_shape is None else list(self.mock_shape),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> AssetDecl:
        """A declaration as `to_json` stored it (already checked)."""
        mock_shape = data.get("mock_shape")
        return cls(
            name=str(data["name"]),
            dtype=str(data["dtype"]),
            shape=tuple(data["shape"]),  # type: ignore[arg-type]
            bounds=Bounds.from_json(data.get("bounds")),  # type: ignore[arg-type]
            mock_shape=tuple(mock_shape) if mock_shape is not None else None,  # type: ignore[arg-type]
        )


def check_dataset_name(session: Session, name: str) -> None:
    if not re.fullmatch(DATASET_NAME, name):
        raise ValidationError(
            "A dataset name is 1 to 100 letters, digits, '_', '.' or '-', starting with a "
            f"letter or digit. Received: {name!r}",
            field="name",
        )
    if session.scalars(select(DatasetRow.id).where(DatasetRow.name == name)).first():
        raise Conflict(f"A dataset named {name!r} exists already.", dataset=name)


def declare(
    *,
    name: str,
    dtype: str,
    shape: Sequence[int],
    bounds: object = None,
    mock_shape: Sequence[int] | None = None,
) -> AssetDecl:
    """An owner's declaration as given (bounds as `(low, high)`, numbers or per-channel
    lists); `check_assets` checks it."""
    parsed = None
    if bounds is not None:
        what = f"Asset {name!r}"
        parsed = Bounds.parse(
            bounds,
            dtype=check_dtype(dtype, what=f"{what}: dtype"),
            shape=_check_shape(shape, what=f"{what}: shape"),
            what=what,
        )
    return AssetDecl(
        name=name,
        dtype=dtype,
        shape=tuple(shape),
        bounds=parsed,
        mock_shape=None if mock_shape is None else tuple(mock_shape),
    )


def check_assets(assets: Sequence[AssetDecl], *, max_bytes: int) -> tuple[AssetDecl, ...]:
    """The declared assets in canonical form, or a refusal saying what is wrong."""
    checked = tuple(_check_decl(decl) for decl in assets)
    if not checked or len(checked) > MAX_ASSETS:
        raise ValidationError(f"A dataset needs 1 to {MAX_ASSETS} assets. Received: {len(checked)}")
    names = [decl.name for decl in checked]
    if len(set(names)) != len(names):
        raise ValidationError(f"Asset names must be unique. Received: {names}")
    rows = {decl.name: decl.shape[0] for decl in checked}
    if len(set(rows.values())) > 1:
        raise ValidationError(
            "The assets of one dataset share one row space (row i of each is one record), "
            f"so they need the same number of rows. Received: {rows}",
            rows=rows,
        )
    total = sum(decl.nbytes * (2 if decl.mock_shape else 1) for decl in checked)
    if total > max_bytes:
        raise ValidationError(
            f"An upload may hold at most {max_bytes} bytes (max_upload_bytes). "
            f"Received: {total} bytes declared",
            max_bytes=max_bytes,
            declared=total,
        )
    return checked


def check_subject(assets: Sequence[AssetDecl], subject: str | None) -> None:
    """The subject asset, if named, is one of the assets: one integer id per row."""
    if subject is None:
        return
    found = [decl for decl in assets if decl.name == subject]
    if not found:
        raise ValidationError(
            f"subject names the asset that holds each row's data subject. Expected one of "
            f"{[decl.name for decl in assets]}. Received: subject={subject!r}",
            field="subject",
        )
    decl = found[0]
    if np.dtype(decl.dtype).kind not in "iu" or decl.shape[1:] not in ((), (1,)):
        raise ValidationError(
            f"The subject asset {subject!r} holds one integer id per row: an integer array of "
            f"shape (N,) or (N, 1). Received: {np.dtype(decl.dtype).name} of shape {decl.shape}",
            field="subject",
        )


def _check_decl(decl: AssetDecl) -> AssetDecl:
    what = f"Asset {decl.name!r}"
    if not re.fullmatch(ASSET_NAME, decl.name):
        raise ValidationError(
            "An asset name is a Python identifier of at most 64 characters. "
            f"Received: {decl.name!r}",
            field="name",
        )
    dtype = check_dtype(decl.dtype, what=f"{what}: dtype")
    shape = _check_shape(decl.shape, what=f"{what}: shape")
    bounds = decl.bounds
    mock_shape = decl.mock_shape
    if mock_shape is not None:
        mock_shape = _check_shape(mock_shape, what=f"{what}: mock shape")
        if mock_shape[1:] != shape[1:] or mock_shape[0] > shape[0]:
            raise ValidationError(
                f"{what}: a mock has the asset's trailing shape {shape[1:]} and at most "
                f"{shape[0]} rows. Received: mock shape {mock_shape}"
            )
    if bounds is None and mock_shape is None and dtype.str not in FULL_RANGE:
        raise ValidationError(
            f"{what} ({dtype.name}) needs bounds=(low, high) or a mock: the node makes mocks "
            "from declared bounds only, never from private values. Only uint8 and bool "
            "default to their full range. Received: neither",
            asset=decl.name,
        )
    return AssetDecl(decl.name, dtype.str, shape, bounds, mock_shape)


def _check_shape(shape: Sequence[object], *, what: str) -> tuple[int, ...]:
    ok = 1 <= len(shape) <= MAX_NDIM and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
    )
    if not ok:
        raise ValidationError(
            f"{what} must be 1 to {MAX_NDIM} positive ints (rows first). Received: {list(shape)}"
        )
    return tuple(int(d) for d in shape)  # type: ignore[call-overload]
