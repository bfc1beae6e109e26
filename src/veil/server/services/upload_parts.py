"""Receiving one array of an upload: raw `.npy` bytes streamed into its staging folder.

The header is checked against the declaration before any data is kept, the size
against the header, the SHA-256 against the one the owner sent. The node never holds
an array in memory; a chunk at a time only.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

from anyio import to_thread

from veil._exceptions import ValidationError, VeilError
from veil.server.db.tables.accounts import UserRow
from veil.server.services.upload_manifests import part_path, read_manifest
from veil.server.storage.arrays import ArrayStore
from veil.server.storage.staging import CheckedNpyFile

__all__ = ["PartReceived", "open_part", "receive_part"]

# Chunks from the socket are small; gathering them saves thread hops per write.
_FLUSH_BYTES = 1024**2
# After a refusal mid-stream the node reads (and drops) this much of the rest, so that
# the owner's client sees the refusal rather than a reset connection.
_DRAIN_BYTES = 64 * 1024**2
_PARTS = ("data", "mock")


@dataclass(frozen=True)
class PartReceived:
    asset: str
    part: str
    nbytes: int
    sha256: str


def open_part(
    arrays: ArrayStore, *, user: UserRow, upload_id: str, asset: str, part: str, sha256: str
) -> CheckedNpyFile:
    """A writer for one array of an upload, checked against what was declared for it."""
    folder = arrays.upload_dir(upload_id)
    manifest = read_manifest(folder, user=user, upload_id=upload_id)
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
        final=part_path(folder, index, part),
        dtype=decl.dtype,
        shape=decl.part_shape(part),
        sha256=sha256,
        what=f"Asset {asset!r} ({part})",
        check_values=part == "data",
        bounds=None if decl.bounds is None else decl.bounds.limits(),
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


async def _drain(body: AsyncIterator[bytes]) -> None:
    drained = 0
    async for chunk in body:
        drained += len(chunk)
        if drained > _DRAIN_BYTES:
            return
