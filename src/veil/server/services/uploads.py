"""Uploading a dataset: declare, stream each array, commit; or nothing at all.

1. `create_upload` checks the declaration (`upload_declarations`) and opens a staging
   folder with the declaration as its manifest (`upload_manifests`). No row yet.
2. `receive_part` (`upload_parts`) streams one array's raw `.npy` bytes into staging,
   checked and hashed a chunk at a time.
3. `commit_upload` makes the mocks that the owner did not give (`mocks`: from the
   declaration only, never the private values), moves the files in place and inserts
   the dataset and asset rows in one transaction.

Any refusal, interruption or failure discards the whole staging folder, so an upload
either becomes a complete dataset or leaves nothing behind. The routes call this module
only; it hands on the names they need from the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from veil._exceptions import Conflict
from veil.server.db.base import new_id
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.datasets import (
    MOCK_FROM_BOUNDS,
    MOCK_FROM_OWNER,
    AssetRow,
    DatasetRow,
)
from veil.server.services.mocks import generated_mock, generated_shape
from veil.server.services.upload_declarations import (
    MAX_ASSETS,
    MAX_NDIM,
    AssetDecl,
    check_assets,
    check_dataset_name,
    check_subject,
    declare,
)
from veil.server.services.upload_manifests import (
    Manifest,
    part_path,
    read_manifest,
    staged_part,
    write_manifest,
)
from veil.server.services.upload_parts import open_part, receive_part
from veil.server.storage.arrays import ArrayStore
from veil.server.storage.npy import header_bytes
from veil.server.storage.staging import checksum_path

__all__ = [
    "MAX_ASSETS",
    "MAX_NDIM",
    "AssetDecl",
    "abort_upload",
    "commit_upload",
    "create_upload",
    "declare",
    "ingest_arrays",
    "receive_part",
]


def create_upload(
    session: Session,
    arrays: ArrayStore,
    *,
    user: UserRow,
    name: str,
    description: str,
    assets: Sequence[AssetDecl],
    max_bytes: int,
    subject: str | None = None,
) -> str:
    """Check a declaration and open its staging folder; returns the upload id.

    `subject` names the asset holding each row's data subject (a person): the privacy
    unit of the dataset becomes the subject instead of the row.
    """
    check_dataset_name(session, name)
    checked = check_assets(assets, max_bytes=max_bytes)
    check_subject(checked, subject)
    arrays.sweep_staging()
    _sweep_orphans(session, arrays)
    upload_id = new_id()
    folder = arrays.upload_dir(upload_id)
    folder.mkdir()
    manifest = Manifest(upload_id, user.id, name, description, checked, subject=subject)
    write_manifest(arrays, folder, manifest)
    return upload_id


def abort_upload(arrays: ArrayStore, *, user: UserRow, upload_id: str) -> None:
    folder = arrays.upload_dir(upload_id)
    read_manifest(folder, user=user, upload_id=upload_id)
    arrays.remove(folder)


def commit_upload(
    session: Session, arrays: ArrayStore, *, user: UserRow, upload_id: str
) -> DatasetRow:
    """Turn a complete upload into a dataset, in one transaction; else leave nothing."""
    folder = arrays.upload_dir(upload_id)
    for index, decl in enumerate(read_manifest(folder, user=user, upload_id=upload_id).assets):
        staged_part(folder, index, "data", decl)
        if decl.mock_shape:
            staged_part(folder, index, "mock", decl)
    claimed = arrays.claim_upload(upload_id)
    dataset_id = new_id()
    try:
        manifest = read_manifest(claimed, user=user, upload_id=upload_id)
        dataset = DatasetRow(
            id=dataset_id,
            name=manifest.name,
            description=manifest.description,
            owner_id=user.id,
            subject_asset=manifest.subject,
        )
        rows: list[AssetRow] = []
        moves: list[tuple[Path, Path]] = []
        for index, decl in enumerate(manifest.assets):
            data = staged_part(claimed, index, "data", decl)
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
                bounds=None if decl.bounds is None else decl.bounds.to_json(),
                mock_source=MOCK_FROM_OWNER if decl.mock_shape else MOCK_FROM_BOUNDS,
                mock_rows=(decl.mock_shape or generated_shape(decl))[0],
            )
            if decl.mock_shape:
                mock = staged_part(claimed, index, "mock", decl)
            else:
                mock = part_path(claimed, index, "mock")
                arrays.save(mock, generated_mock(decl))
            moves += [
                (data, arrays.asset_path(dataset_id, row.id)),
                (mock, arrays.mock_path(dataset_id, row.id)),
            ]
            rows.append(row)
        dataset.n_subjects = rows[0].n_rows
        if manifest.subject is not None:
            index, _ = manifest.asset(manifest.subject)
            ranks = subject_ranks(arrays.open(part_path(claimed, index, "data")))
            dataset.n_subjects = int(ranks.max()) + 1
            staged = claimed / "subjects.npy"
            arrays.save(staged, ranks)
            moves.append((staged, arrays.subjects_path(dataset_id)))
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


def subject_ranks(ids: np.ndarray) -> np.ndarray:
    """Each row's subject as its rank among the distinct ids (0..S-1, in id order)."""
    _, ranks = np.unique(np.asarray(ids).reshape(-1), return_inverse=True)
    return ranks.astype(np.int64)


def ingest_arrays(
    session: Session,
    arrays: ArrayStore,
    *,
    user: UserRow,
    name: str,
    description: str,
    assets: Mapping[str, np.ndarray],
    mocks: Mapping[str, np.ndarray] | None = None,
    bounds: Mapping[str, object] | None = None,
    max_bytes: int,
    subject: str | None = None,
) -> DatasetRow:
    """Create a dataset from arrays in this process, through the same checks as an upload."""
    mocks = dict(mocks or {})
    bounds = dict(bounds or {})
    decls = [
        declare(
            name=asset,
            dtype=np.asarray(array).dtype.str,
            shape=np.shape(array),
            bounds=bounds.get(asset),
            mock_shape=np.shape(mocks[asset]) if asset in mocks else None,
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
        subject=subject,
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
