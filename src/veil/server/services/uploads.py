"""Uploading a dataset: declare, stream each array, commit; or nothing at all.

1. `create_upload` checks the declaration (names, dtypes, shapes, bounds, mocks, size)
   and opens a staging folder with the declaration as its manifest. No row yet.
2. `receive_part` writes one array's raw `.npy` bytes straight to a staging file while
   hashing them: the header is checked against the declaration before any data is
   kept, the size against the header, the SHA-256 against the one the owner sent.
   The node never holds an array in memory; a chunk at a time only.
3. `commit_upload` makes the mocks that the owner did not give (from the declaration
   only: shape, dtype and bounds, never the private values), moves the files in place
   and inserts the dataset and asset rows in one transaction.

Any refusal, interruption or failure discards the whole staging folder, so an upload
either becomes a complete dataset or leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
from anyio import to_thread
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from veil._exceptions import Conflict, NotFound, ValidationError, VeilError
from veil.server.db.base import new_id
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.datasets import (
    MOCK_FROM_BOUNDS,
    MOCK_FROM_OWNER,
    AssetRow,
    DatasetRow,
)
from veil.server.storage.arrays import ArrayStore
from veil.server.storage.npy import check_dtype, header_bytes
from veil.server.storage.staging import CheckedNpyFile, checksum_path

__all__ = [
    "DATASET_NAME",
    "ASSET_NAME",
    "AssetDecl",
    "PartReceived",
    "abort_upload",
    "commit_upload",
    "create_upload",
    "generated_mock",
    "ingest_arrays",
    "open_part",
    "receive_part",
]

DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"
ASSET_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
GENERATED_MOCK_ROWS = 100
MAX_ASSETS = 64
MAX_NDIM = 8
# Chunks from the socket are small; gathering them saves thread hops per write.
_FLUSH_BYTES = 1024**2
# After a refusal mid-stream the node reads (and drops) this much of the rest, so that
# the owner's client sees the refusal rather than a reset connection.
_DRAIN_BYTES = 64 * 1024**2
_FULL_RANGE = {"|u1": (0.0, 255.0), "|b1": (0.0, 1.0)}
_PARTS = ("data", "mock")


@dataclass(frozen=True)
class AssetDecl:
    """What the owner declares about one asset before sending it; all of it public."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    bounds: tuple[float, float] | None = None
    mock_shape: tuple[int, ...] | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def part_shape(self, part: str) -> tuple[int, ...]:
        if part == "mock":
            assert self.mock_shape is not None
            return self.mock_shape
        return self.shape

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> AssetDecl:
        bounds = data.get("bounds")
        mock_shape = data.get("mock_shape")
        return cls(
            name=str(data["name"]),
            dtype=str(data["dtype"]),
            shape=tuple(data["shape"]),  # type: ignore[arg-type]
            bounds=tuple(bounds) if bounds is not None else None,  # type: ignore[arg-type]
            mock_shape=tuple(mock_shape) if mock_shape is not None else None,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class _Manifest:
    upload_id: str
    owner_id: str
    name: str
    description: str
    assets: tuple[AssetDecl, ...]

    def asset(self, name: str) -> tuple[int, AssetDecl]:
        for index, decl in enumerate(self.assets):
            if decl.name == name:
                return index, decl
        raise NotFound(
            f"Upload {self.upload_id} declares no asset {name!r}. "
            f"Declared: {[a.name for a in self.assets]}",
            asset=name,
        )


@dataclass(frozen=True)
class PartReceived:
    asset: str
    part: str
    nbytes: int
    sha256: str


def create_upload(
    session: Session,
    arrays: ArrayStore,
    *,
    user: UserRow,
    name: str,
    description: str,
    assets: Sequence[AssetDecl],
    max_bytes: int,
) -> str:
    """Check a declaration and open its staging folder; returns the upload id."""
    _check_dataset_name(session, name)
    checked = tuple(_check_decl(decl) for decl in assets)
    if not checked or len(checked) > MAX_ASSETS:
        raise ValidationError(f"A dataset needs 1 to {MAX_ASSETS} assets. Received: {len(checked)}")
    names = [decl.name for decl in checked]
    if len(set(names)) != len(names):
        raise ValidationError(f"Asset names must be unique. Received: {names}")
    total = sum(decl.nbytes * (2 if decl.mock_shape else 1) for decl in checked)
    if total > max_bytes:
        raise ValidationError(
            f"An upload may hold at most {max_bytes} bytes (max_upload_bytes). "
            f"Received: {total} bytes declared",
            max_bytes=max_bytes,
            declared=total,
        )
    arrays.sweep_staging()
    _sweep_orphans(session, arrays)
    upload_id = new_id()
    folder = arrays.upload_dir(upload_id)
    folder.mkdir()
    manifest = _Manifest(upload_id, user.id, name, description, checked)
    arrays.write_json(folder / "manifest.json", _manifest_json(manifest))
    return upload_id


def abort_upload(arrays: ArrayStore, *, user: UserRow, upload_id: str) -> None:
    folder = arrays.upload_dir(upload_id)
    _read_manifest(folder, user=user, upload_id=upload_id)
    arrays.remove(folder)


def open_part(
    arrays: ArrayStore, *, user: UserRow, upload_id: str, asset: str, part: str, sha256: str
) -> CheckedNpyFile:
    """A writer for one array of an upload, checked against what was declared for it."""
    folder = arrays.upload_dir(upload_id)
    manifest = _read_manifest(folder, user=user, upload_id=upload_id)
    index, decl = manifest.asset(asset)
    if part not in _PARTS:
        raise ValidationError(f"part must be one of {_PARTS}. Received: {part!r}")
    if part == "mock" and decl.mock_shape is None:
        raise ValidationError(
            f"Asset {asset!r} was declared without a mock; declare mock_shape to send one."
        )
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValidationError(f"Expected a SHA-256 of 64 hex digits. Received: {sha256!r}")
    return CheckedNpyFile(
        arrays.atomic_file(folder),
        final=folder / f"{index}.{part}.npy",
        dtype=decl.dtype,
        shape=decl.part_shape(part),
        sha256=sha256,
        what=f"Asset {asset!r} ({part})",
    )


async def receive_part(
    arrays: ArrayStore,
    *,
    user: UserRow,
    upload_id: str,
    asset: str,
    part: str,
    sha256: str,
    body: AsyncIterator[bytes],
) -> PartReceived:
    """Stream `body` into staging; a refusal or an interruption discards the upload."""
    writer = await to_thread.run_sync(
        partial(
            open_part,
            arrays,
            user=user,
            upload_id=upload_id,
            asset=asset,
            part=part,
            sha256=sha256,
        )
    )
    buffer = bytearray()
    try:
        try:
            async for chunk in body:
                buffer += chunk
                if len(buffer) >= _FLUSH_BYTES:
                    await to_thread.run_sync(writer.write, buffer)
                    buffer = bytearray()
            await to_thread.run_sync(writer.write, buffer)
            digest = await to_thread.run_sync(writer.finish)
        except VeilError:
            await _drain(body)
            raise
    except BaseException:
        # Plain calls, no await: this also runs when the task is being cancelled.
        writer.discard()
        arrays.remove(arrays.upload_dir(upload_id))
        raise
    return PartReceived(asset=asset, part=part, nbytes=writer.received, sha256=digest)


def commit_upload(
    session: Session, arrays: ArrayStore, *, user: UserRow, upload_id: str
) -> DatasetRow:
    """Turn a complete upload into a dataset, in one transaction; else leave nothing."""
    folder = arrays.upload_dir(upload_id)
    for index, decl in enumerate(_read_manifest(folder, user=user, upload_id=upload_id).assets):
        _staged(folder, index, "data", decl)
        if decl.mock_shape:
            _staged(folder, index, "mock", decl)
    claimed = arrays.claim_upload(upload_id)
    dataset_id = new_id()
    try:
        manifest = _read_manifest(claimed, user=user, upload_id=upload_id)
        dataset = DatasetRow(
            id=dataset_id,
            name=manifest.name,
            description=manifest.description,
            owner_id=user.id,
        )
        rows: list[AssetRow] = []
        moves: list[tuple[Path, Path]] = []
        for index, decl in enumerate(manifest.assets):
            data = _staged(claimed, index, "data", decl)
            row = AssetRow(
                id=new_id(),
                dataset_id=dataset_id,
                name=decl.name,
                position=index,
                dtype=decl.dtype,
                shape=list(decl.shape),
                n_rows=decl.shape[0],
                nbytes=data.stat().st_size,
                sha256=checksum_path(data).read_text(),
                bounds_low=decl.bounds[0] if decl.bounds else None,
                bounds_high=decl.bounds[1] if decl.bounds else None,
                mock_source=MOCK_FROM_OWNER if decl.mock_shape else MOCK_FROM_BOUNDS,
                mock_rows=(decl.mock_shape or _generated_shape(decl))[0],
            )
            if decl.mock_shape:
                mock = _staged(claimed, index, "mock", decl)
            else:
                mock = claimed / f"{index}.mock.npy"
                arrays.save(mock, generated_mock(decl))
            moves += [
                (data, arrays.asset_path(dataset_id, row.id)),
                (mock, arrays.mock_path(dataset_id, row.id)),
            ]
            rows.append(row)
        arrays.install(dataset_id, moves)
        session.add(dataset)
        session.flush()  # the dataset row first: PostgreSQL checks foreign keys per statement
        session.add_all(rows)
        session.commit()
    except IntegrityError:
        session.rollback()
        arrays.remove_dataset(dataset_id)
        raise Conflict(
            f"A dataset named {manifest.name!r} exists already.", dataset=manifest.name
        ) from None
    except BaseException:
        session.rollback()
        arrays.remove_dataset(dataset_id)
        raise
    finally:
        arrays.remove(claimed)
    return dataset


def ingest_arrays(
    session: Session,
    arrays: ArrayStore,
    *,
    user: UserRow,
    name: str,
    description: str,
    assets: Mapping[str, np.ndarray],
    mocks: Mapping[str, np.ndarray] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    max_bytes: int,
) -> DatasetRow:
    """Create a dataset from arrays in this process, through the same checks as an upload."""
    mocks = dict(mocks or {})
    bounds = dict(bounds or {})
    decls = [
        AssetDecl(
            name=asset,
            dtype=np.asarray(array).dtype.str,
            shape=tuple(np.shape(array)),
            bounds=tuple(bounds[asset]) if asset in bounds else None,  # type: ignore[arg-type]
            mock_shape=tuple(np.shape(mocks[asset])) if asset in mocks else None,
        )
        for asset, array in assets.items()
    ]
    upload_id = create_upload(
        session,
        arrays,
        user=user,
        name=name,
        description=description,
        assets=decls,
        max_bytes=max_bytes,
    )
    try:
        for asset, array in assets.items():
            parts = [("data", array)] + ([("mock", mocks[asset])] if asset in mocks else [])
            for part, values in parts:
                values = np.ascontiguousarray(values)
                head = header_bytes(values.dtype, values.shape)
                raw = memoryview(values).cast("B")
                digest = hashlib.sha256(head)
                digest.update(raw)
                writer = open_part(
                    arrays,
                    user=user,
                    upload_id=upload_id,
                    asset=asset,
                    part=part,
                    sha256=digest.hexdigest(),
                )
                try:
                    writer.write(head)
                    writer.write(raw)
                    writer.finish()
                except BaseException:
                    writer.discard()
                    raise
    except BaseException:
        arrays.remove(arrays.upload_dir(upload_id))
        raise
    return commit_upload(session, arrays, user=user, upload_id=upload_id)


def generated_mock(decl: AssetDecl) -> np.ndarray:
    """A mock made from the declaration only: shape, dtype and bounds, never values.

    The seed comes from the same public facts, so the mock is the same whatever the
    private values are.
    """
    dtype = np.dtype(decl.dtype)
    low, high = _mock_bounds(decl)
    facts = json.dumps([decl.name, decl.dtype, list(decl.shape), [low, high]])
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(facts.encode()).digest()[:8]))
    shape = _generated_shape(decl)
    if dtype.kind == "f":
        return rng.uniform(low, high, size=shape).astype(dtype)
    return rng.integers(int(low), int(high), size=shape, endpoint=True).astype(dtype)


def _generated_shape(decl: AssetDecl) -> tuple[int, ...]:
    return (min(decl.shape[0], GENERATED_MOCK_ROWS), *decl.shape[1:])


def _mock_bounds(decl: AssetDecl) -> tuple[float, float]:
    if decl.bounds is not None:
        low, high = decl.bounds
    else:
        low, high = _FULL_RANGE[decl.dtype]
    if np.dtype(decl.dtype).kind != "f":
        low, high = math.ceil(low), math.floor(high)
    return low, high


def _check_dataset_name(session: Session, name: str) -> None:
    if not re.fullmatch(DATASET_NAME, name):
        raise ValidationError(
            "A dataset name is 1 to 100 letters, digits, '_', '.' or '-', starting with a "
            f"letter or digit. Received: {name!r}",
            field="name",
        )
    if session.scalars(select(DatasetRow.id).where(DatasetRow.name == name)).first():
        raise Conflict(f"A dataset named {name!r} exists already.", dataset=name)


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
    if bounds is not None:
        bounds = _check_bounds(bounds, dtype, what=what)
    mock_shape = decl.mock_shape
    if mock_shape is not None:
        mock_shape = _check_shape(mock_shape, what=f"{what}: mock shape")
        if mock_shape[1:] != shape[1:] or mock_shape[0] > shape[0]:
            raise ValidationError(
                f"{what}: a mock has the asset's trailing shape {shape[1:]} and at most "
                f"{shape[0]} rows. Received: mock shape {mock_shape}"
            )
    if bounds is None and mock_shape is None and dtype.str not in _FULL_RANGE:
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


def _check_bounds(bounds: Sequence[object], dtype: np.dtype, *, what: str) -> tuple[float, float]:
    try:
        low, high = (float(b) for b in bounds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValidationError(f"{what}: bounds must be (low, high). Received: {bounds!r}") from None
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype if dtype.kind != "b" else "u1")
    top = 1 if dtype.kind == "b" else float(info.max)
    if not (math.isfinite(low) and math.isfinite(high) and float(info.min) <= low <= high <= top):
        raise ValidationError(
            f"{what}: bounds must be finite, low <= high, within the range of {dtype.name}. "
            f"Received: {bounds!r}"
        )
    if dtype.kind != "f" and math.ceil(low) > math.floor(high):
        raise ValidationError(f"{what}: bounds hold no integer. Received: {bounds!r}")
    return low, high


def _read_manifest(folder: Path, *, user: UserRow, upload_id: str) -> _Manifest:
    try:
        data = json.loads((folder / "manifest.json").read_text())
    except (FileNotFoundError, NotADirectoryError):
        data = None
    if data is None or data["owner_id"] != user.id:
        raise NotFound(
            f"No upload {upload_id!r}: it was committed, aborted after an error, or expired.",
            upload=upload_id,
        )
    return _Manifest(
        upload_id=data["upload_id"],
        owner_id=data["owner_id"],
        name=data["name"],
        description=data["description"],
        assets=tuple(AssetDecl.from_json(a) for a in data["assets"]),
    )


def _manifest_json(manifest: _Manifest) -> dict[str, object]:
    return {
        "upload_id": manifest.upload_id,
        "owner_id": manifest.owner_id,
        "name": manifest.name,
        "description": manifest.description,
        "created_at": datetime.now(UTC).isoformat(),
        "assets": [asdict(decl) for decl in manifest.assets],
    }


def _staged(folder: Path, index: int, part: str, decl: AssetDecl) -> Path:
    path = folder / f"{index}.{part}.npy"
    if not path.exists():
        raise ValidationError(
            f"Asset {decl.name!r} ({part}) has not been uploaded; send it before committing."
        )
    return path


def _sweep_orphans(session: Session, arrays: ArrayStore) -> None:
    # Files whose commit crashed before its rows were written; fresh ones may belong to a
    # commit running right now, so only stale ones go.
    on_disk = set(arrays.dataset_ids())
    if not on_disk:
        return
    known = set(session.scalars(select(DatasetRow.id).where(DatasetRow.id.in_(on_disk))))
    for dataset_id in on_disk - known:
        if arrays.is_stale(arrays.datasets_dir / dataset_id):
            arrays.remove_dataset(dataset_id)


async def _drain(body: AsyncIterator[bytes]) -> None:
    drained = 0
    async for chunk in body:
        drained += len(chunk)
        if drained > _DRAIN_BYTES:
            return
