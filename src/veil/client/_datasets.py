"""Datasets and asset pointers: `client.datasets`, `dataset["train_images"]`, `ptr[0:100]`.

Arrays travel as raw `.npy` bytes in bounded chunks both ways, so neither side holds a
large array twice: an upload reads the array (or the file) a chunk at a time, and a
download fills one preallocated array. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import io
import math
import operator
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from veil._exceptions import NotFound, OutOfRange, ValidationError
from veil.client._http import Http, segment
from veil.client._releases import Published
from veil.client._table import Table

__all__ = ["AssetPointer", "Dataset", "DatasetsView"]

CHUNK_BYTES = 8 * 1024**2
_DESCRIPTION_WIDTH = 60
_MAGIC = b"\x93NUMPY"

ArraySource = np.ndarray | str | os.PathLike[str]


class AssetPointer:
    """A pointer to a private asset on the node, or to a slice of its rows.

    Its shape, dtype and mock are public; its values are not (`get()` is for the admin).
    Slicing the first axis gives a pointer to those rows, checked here by the rules the
    node applies (shapes are public); the node stores it as a view only when something
    asks for its `id`. A step or an evaluation names such rows in its own request, so a
    batch costs no request of its own.
    """

    def __init__(self, http: Http, data: Mapping[str, Any]) -> None:
        self._http = http
        self._id: str | None = data["id"]  # None: a slice not yet stored on the node
        self.dataset_id: str = data["dataset_id"]
        self.asset_id: str = data["asset_id"]
        self.name: str = data["name"]
        self.public_shape: tuple[int, ...] = tuple(data["shape"])
        self.dtype: np.dtype = np.dtype(data["dtype"])
        self.rows = range(data["start"], data["stop"], data["step"])
        self.is_view: bool = data["is_view"]
        # (low, high) as the owner declared them: numbers, or lists of one per channel.
        self.bounds: tuple[Any, Any] | None = (
            tuple(data["bounds"]) if data.get("bounds") is not None else None  # type: ignore[assignment]
        )
        self.mock_source: str = data["mock_source"]
        self._mock: np.ndarray | None = None

    def __len__(self) -> int:
        return self.public_shape[0]

    def __getitem__(self, key: slice) -> AssetPointer:
        if _is_int(key) and not isinstance(key, bool):
            index = operator.index(key)  # type: ignore[arg-type]
            if not -len(self) <= index < len(self):
                raise OutOfRange(
                    f"Row {index} is out of range: {self.name} has {len(self)} rows.",
                    rows=len(self),
                    index=index,
                )
            raise ValidationError(
                "A pointer is sliced, never indexed, so that it stays a pointer: use "
                f"ptr[{index}:{index + 1 if index != -1 else ''}] for that row. Received: {index}"
            )
        if not isinstance(key, slice):
            raise ValidationError(
                "A pointer slices its first axis only, with ptr[start:stop] or "
                f"ptr[start:stop:step]. Received: {key!r}"
            )
        bounds = {"start": key.start, "stop": key.stop, "step": key.step}
        for field, value in bounds.items():
            if value is not None and (isinstance(value, bool) or not _is_int(value)):
                raise ValidationError(
                    f"Slice {field} must be an int or None. Received: {field}={value!r}"
                )
        body = {k: operator.index(v) for k, v in bounds.items() if v is not None}
        if body.get("step", 1) <= 0:
            raise ValidationError(
                f"A pointer slice needs a positive step. Received: step={body['step']}"
            )
        start, stop, step = body.get("start"), body.get("stop"), body.get("step")
        picked = self.rows[slice(start, stop, step)]
        if not picked:  # the node's words, from public lengths alone
            given = [start, stop] if step is None else [start, stop, step]
            written = ":".join("" if v is None else str(v) for v in given)
            what = f"a view of {self.name!r}" if self.is_view else repr(self.name)
            raise OutOfRange(
                f"Slice [{written}] selects no rows of {what}, which has {len(self)} rows.",
                rows=len(self),
                start=start,
                stop=stop,
                step=step,
            )
        if len(picked) == 1:  # one row: any step says the same, as on the node
            picked = range(picked.start, picked.start + 1)
        return AssetPointer(
            self._http,
            {
                "id": None,
                "dataset_id": self.dataset_id,
                "asset_id": self.asset_id,
                "name": self.name,
                "shape": [len(picked), *self.public_shape[1:]],
                "dtype": self.dtype.name,
                "start": picked.start,
                "stop": picked.stop,
                "step": picked.step,
                "is_view": True,
                "bounds": None if self.bounds is None else list(self.bounds),
                "mock_source": self.mock_source,
            },
        )

    @property
    def id(self) -> str:
        """The pointer's id on the node; a slice is stored as a view on first use."""
        if self._id is None:
            rows = {"start": self.rows.start, "stop": self.rows.stop, "step": self.rows.step}
            self._id = self._http.post(f"/assets/{self.asset_id}/slice", json=rows)["id"]
        return self._id

    def _named_rows(self) -> tuple[str, dict[str, int] | None]:
        """(pointer id, rows of it) for a request that reads these rows: a slice not
        stored on the node goes as its asset and row range, with no request of its own."""
        if self._id is not None:
            return self._id, None
        return self.asset_id, {
            "start": self.rows.start,
            "stop": self.rows.stop,
            "step": self.rows.step,
        }

    @property
    def mock(self) -> np.ndarray:
        """Public stand-in data: the asset's mock, sliced like this pointer as far as it goes."""
        if self._mock is None:
            content = self._http.request("GET", f"/assets/{self.id}/mock").content
            self._mock = np.load(io.BytesIO(content), allow_pickle=False)
        return self._mock

    def quote_statistics(
        self, *, epsilon: float | None = None, sigma: float | None = None
    ) -> dict[str, Any]:
        """What `statistics(...)` would cost, before anything is spent: `cost` (added to
        your epsilon `spent`), the noise `sigma`, the rows and channels it covers."""
        return self._http.post(f"/assets/{self.id}/statistics/quote", json=_noise(epsilon, sigma))

    def statistics(self, *, epsilon: float | None = None, sigma: float | None = None) -> Published:
        """Per-channel (axis 1) mean and std of these rows, released with noise and
        charged (a `Published`; `.get()` gives `{"mean": ..., "std": ...}`). Give the
        `epsilon` to spend or the noise multiplier `sigma`."""
        data = self._http.post(f"/assets/{self.id}/statistics", json=_noise(epsilon, sigma))
        return Published.from_json(self._http, data)

    def get(self) -> np.ndarray:
        """The private values, for the node's admin only; anyone else gets PermissionDenied."""
        response = self._http.stream_get(f"/assets/{self.id}/data")
        try:
            return _read_npy(response.iter_bytes())
        finally:
            response.close()

    def __repr__(self) -> str:
        where = self.name
        if self.is_view:
            where += f"[{self.rows.start}:{self.rows.stop}:{self.rows.step}]"
        shown = self._id or "(a slice, stored on the node on first use)"
        return f"<AssetPointer {where} {self.dtype.name} {self.public_shape} id={shown}>"


class Dataset:
    """One dataset on the node: its public description and a pointer per asset."""

    def __init__(self, http: Http, data: Mapping[str, Any]) -> None:
        self.id: str = data["id"]
        self.name: str = data["name"]
        self.description: str = data["description"]
        self.created_at = datetime.fromisoformat(data["created_at"])
        self.assets: dict[str, AssetPointer] = {
            a["name"]: AssetPointer(http, a) for a in data["assets"]
        }
        # The unit of privacy: "row", or "subject" (a person owning several rows), and
        # how many there are. Quotes, budgets and charges speak of this unit.
        self.unit: str = data["unit"]
        self.subjects: int = data["subjects"]
        self.subject_asset: str | None = data["subject_asset"]

    def __getitem__(self, name: str) -> AssetPointer:
        try:
            return self.assets[name]
        except (KeyError, TypeError):
            raise NotFound(
                f"Dataset {self.name!r} has no asset {name!r}. Assets: {list(self.assets)}",
                asset=name,
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.assets

    def keys(self) -> list[str]:
        return list(self.assets)

    @property
    def unit_text(self) -> str:
        """'row', or 'subject (162 in patient_id)'."""
        if self.unit == "row":
            return "row"
        return f"subject ({self.subjects} in {self.subject_asset})"

    def table(self) -> Table:
        rows = [
            [p.name, str(p.public_shape), p.dtype.name, p.mock_source, p.id]
            for p in self.assets.values()
        ]
        return Table(["Asset", "Shape", "Dtype", "Mock", "Id"], rows)

    def __repr__(self) -> str:
        return (
            f"Dataset {self.name} ({self.id}), privacy unit: {self.unit_text}\n"
            f"{self.description}\n\n{self.table()!r}"
        )

    def _repr_html_(self) -> str:
        title = f"<p><b>{html.escape(self.name)}</b>: {html.escape(self.description)}</p>"
        return title + self.table()._repr_html_()


class DatasetsView:
    """`client.datasets`: list, index (by position or name), upload and delete datasets."""

    def __init__(self, http: Http) -> None:
        self._http = http
        self._items: list[Dataset] | None = None

    @property
    def items(self) -> list[Dataset]:
        if self._items is None:
            self._items = [Dataset(self._http, d) for d in self._http.get("/datasets")]
        return self._items

    def refresh(self) -> DatasetsView:
        self._items = None
        return self

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Dataset]:
        return iter(self.items)

    def __getitem__(self, key: int | str) -> Dataset:
        items = self.items
        if _is_int(key) and not isinstance(key, bool):
            index = operator.index(key)  # type: ignore[arg-type]
            if not -len(items) <= index < len(items):
                raise IndexError(
                    f"Dataset index out of range: there are {len(items)} datasets. "
                    f"Received: {index}"
                )
            return items[index]
        for dataset in items:
            if key in (dataset.name, dataset.id):
                return dataset
        raise NotFound(f"No dataset {key!r}. Datasets: {[d.name for d in items]}", dataset=str(key))

    def names(self) -> list[str]:
        return [d.name for d in self.items]

    def table(self, *, full: bool = False) -> Table:
        rows = []
        for index, d in enumerate(self.items):
            text = d.description
            if not full and len(text) > _DESCRIPTION_WIDTH:
                text = text[: _DESCRIPTION_WIDTH - 3] + "..."
            assets = " ".join(f'["{name}"] ->' for name in d.assets)
            rows.append([f"[{index}]", d.name, text, assets, d.unit_text, d.id])
        return Table(["Idx", "Name", "Description", "Assets", "Privacy unit", "Id"], rows)

    def __repr__(self) -> str:
        return repr(self.table())

    def _repr_html_(self) -> str:
        return self.table(full=True)._repr_html_()

    def upload(
        self,
        *,
        name: str,
        description: str = "",
        assets: Mapping[str, ArraySource],
        mock: Mapping[str, ArraySource] | None = None,
        bounds: Mapping[str, tuple[Any, Any]] | None = None,
        subject: str | None = None,
    ) -> Dataset:
        """Upload a dataset (admin only); on any failure the node keeps nothing.

        `assets` maps names to arrays or paths of .npy files, streamed in chunks. Each
        asset's mock is `mock[name]` if given, else generated on the node from the
        declared `bounds[name] = (low, high)` only (uint8 and bool default to their
        full range; other dtypes need bounds or a mock). `low` and `high` are numbers, or
        lists of one per channel (axis 1) for features of different scales. Values
        outside them, NaN or infinity are refused with the row named.

        `subject` names the asset holding each row's data subject (an integer id per
        row, e.g. a patient): privacy then protects each subject, all its rows together,
        instead of each row.
        """
        mock = dict(mock or {})
        bounds = dict(bounds or {})
        unknown = sorted((set(mock) | set(bounds)) - set(assets))
        if unknown:
            raise ValidationError(
                f"mock and bounds may only name assets being uploaded ({list(assets)}). "
                f"Received: {unknown}"
            )
        sources = {n: _source(v, what=f"Asset {n!r}") for n, v in assets.items()}
        mocks = {n: _source(v, what=f"Mock of {n!r}") for n, v in mock.items()}
        declared = [
            {
                "name": n,
                "dtype": s.dtype.str,
                "shape": list(s.shape),
                "bounds": list(bounds[n]) if n in bounds else None,
                "mock_shape": list(mocks[n].shape) if n in mocks else None,
            }
            for n, s in sources.items()
        ]
        body = {"name": name, "description": description, "assets": declared, "subject": subject}
        upload_id = self._http.post("/datasets/uploads", json=body)["id"]
        try:
            for asset, source in sources.items():
                self._send(upload_id, asset, "data", source)
                if asset in mocks:
                    self._send(upload_id, asset, "mock", mocks[asset])
            dataset = Dataset(self._http, self._http.post(f"/datasets/uploads/{upload_id}/commit"))
        except BaseException:
            _abandon(self._http, upload_id)
            raise
        self._items = None
        return dataset

    def delete(self, name_or_id: str) -> None:
        """Delete a dataset, its pointers and its files (admin only)."""
        self._http.delete(f"/datasets/{segment(name_or_id)}")
        self._items = None

    def _send(self, upload_id: str, asset: str, part: str, source: _Source) -> None:
        headers = {
            "X-Veil-SHA256": source.sha256(),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(source.size),
        }
        self._http.request(
            "PUT",
            f"/datasets/uploads/{upload_id}/{asset}/{part}",
            content=source.chunks(),
            headers=headers,
        )


class _Source(ABC):
    """The .npy bytes of an array or a file, readable a chunk at a time, more than once."""

    dtype: np.dtype
    shape: tuple[int, ...]
    size: int

    @abstractmethod
    def chunks(self) -> Iterator[bytes]: ...

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


class _ArraySource(_Source):
    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.dtype = array.dtype
        self.shape = array.shape
        self.header = _header(array.dtype, array.shape) if not array.dtype.hasobject else b""
        self.size = len(self.header) + array.nbytes

    def chunks(self) -> Iterator[bytes]:
        yield self.header
        if self.array.ndim == 0:
            yield self.array.tobytes()
            return
        row_bytes = max(1, self.array[:1].nbytes)
        per_chunk = max(1, CHUNK_BYTES // row_bytes)
        for first in range(0, self.array.shape[0], per_chunk):
            # One bounded copy per chunk (C order), never a second copy of the array.
            yield self.array[first : first + per_chunk].tobytes()


class _FileSource(_Source):
    def __init__(self, path: Path, *, what: str) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                header = _parse_header(f.read(16 * 1024))
        except OSError as exc:
            raise ValidationError(f"{what}: cannot read {str(path)!r}: {exc}") from None
        if header is None:
            raise ValidationError(f"{what}: {str(path)!r} is not a .npy file.")
        self.dtype, self.shape, fortran_order, _ = header
        if fortran_order:
            raise ValidationError(
                f"{what}: expected a C-order .npy file; save np.ascontiguousarray(arr). "
                f"Received: fortran_order=True in {str(path)!r}"
            )
        self.size = path.stat().st_size

    def chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk


def _source(value: ArraySource, *, what: str) -> _Source:
    if isinstance(value, np.ndarray):
        return _ArraySource(value)
    if isinstance(value, str | os.PathLike):
        return _FileSource(Path(value), what=what)
    raise ValidationError(
        f"{what} must be a numpy array or the path of a .npy file. Received: {type(value).__name__}"
    )


def _abandon(http: Http, upload_id: str) -> None:
    # Best effort: the node already discards an upload that failed on its side.
    with contextlib.suppress(Exception):  # the first error is the one worth raising
        http.delete(f"/datasets/uploads/{upload_id}")


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    fields = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": shape,
    }
    out = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(out, fields)
    except ValueError:
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, fields)
    return out.getvalue()


def _parse_header(prefix: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int] | None:
    """(dtype, shape, fortran_order, data offset), or None if `prefix` is not .npy."""
    if not prefix.startswith(_MAGIC) or len(prefix) < 10:
        return None
    width = 2 if prefix[6] == 1 else 4
    offset = 8 + width + int.from_bytes(prefix[8 : 8 + width], "little")
    if len(prefix) < offset:
        return None
    stream = io.BytesIO(prefix[:offset])
    try:
        version = np.lib.format.read_magic(stream)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read(stream)
    except ValueError:
        return None
    return dtype, tuple(shape), bool(fortran_order), offset


def _read_npy(chunks: Iterator[bytes]) -> np.ndarray:
    """An array from streamed .npy bytes, filled in place; refuses object dtypes."""
    prefix = b""
    header = None
    for chunk in chunks:
        prefix += chunk
        header = _parse_header(prefix)
        if header is not None or len(prefix) > 16 * 1024:
            break
    if header is None:
        raise ValidationError("The node sent something that is not a .npy array.")
    dtype, shape, _, offset = header
    if dtype.hasobject:
        raise ValidationError(f"Refusing an object array from the node. Received: {dtype}")
    out = np.empty(shape, dtype=dtype)
    target = memoryview(out).cast("B") if out.nbytes else memoryview(bytearray())
    filled = 0
    for chunk in _chain(prefix[offset:], chunks):
        if filled + len(chunk) > len(target):
            raise ValidationError("The node sent more bytes than its .npy header declares.")
        target[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    if filled != math.prod(shape) * dtype.itemsize:
        raise ValidationError(f"The download ended early: {filled} of {out.nbytes} bytes arrived.")
    return out


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _noise(epsilon: float | None, sigma: float | None) -> dict[str, float]:
    return {k: v for k, v in (("epsilon", epsilon), ("sigma", sigma)) if v is not None}


def _is_int(value: object) -> bool:
    try:
        operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True
