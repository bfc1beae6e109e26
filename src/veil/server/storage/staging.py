"""A `.npy` file arriving in chunks: checked, hashed and renamed into place only if whole.

The header is checked against the expected dtype and shape as soon as it is complete,
before any data is kept; the byte count against the header as bytes pass; the SHA-256
at the end. Only then does the file appear under its final name, next to its checksum.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from veil._exceptions import ValidationError
from veil.server.storage.arrays import AtomicFile
from veil.server.storage.npy import NpyHeader, parse_header

__all__ = ["CheckedNpyFile", "checksum_path"]


def checksum_path(npy_path: Path) -> Path:
    return npy_path.with_name(npy_path.name + ".sha256")


class CheckedNpyFile:
    def __init__(
        self,
        out: AtomicFile,
        *,
        final: Path,
        dtype: str,
        shape: tuple[int, ...],
        sha256: str,
        what: str,
    ) -> None:
        self._out = out
        self._final = final
        self._dtype = dtype
        self._shape = shape
        self._expected_sha = sha256.lower()
        self._what = what
        self._hash = hashlib.sha256()
        self._prefix = bytearray()
        self._header: NpyHeader | None = None
        self.received = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.received += len(data)
        self._hash.update(data)
        if self._header is None:
            self._prefix += data
            self._header = parse_header(self._prefix)
            if self._header is None:
                return
            self._check_header(self._header)
            data, self._prefix = self._prefix, bytearray()
        if self.received > self._header.total_bytes:
            raise ValidationError(
                f"{self._what}: the .npy header declares {self._header.total_bytes} bytes "
                f"but more arrived ({self.received} so far)."
            )
        self._out.write(data)

    def finish(self) -> str:
        """Check completeness and checksum, then move into place; returns the SHA-256."""
        expected = self._header.total_bytes if self._header else "a complete .npy header"
        if self._header is None or self.received != expected:
            raise ValidationError(
                f"{self._what}: the upload ended early. Expected: {expected} bytes. "
                f"Received: {self.received} bytes",
                received=self.received,
            )
        digest = self._hash.hexdigest()
        if digest != self._expected_sha:
            raise ValidationError(
                f"{self._what}: checksum mismatch. Expected SHA-256: {self._expected_sha}. "
                f"Received bytes hash to: {digest}",
                expected=self._expected_sha,
                received=digest,
            )
        # The checksum goes first: a staged .npy without its checksum never exists.
        checksum_path(self._final).write_text(digest)
        self._out.commit(self._final)
        return digest

    def discard(self) -> None:
        self._out.discard()

    def _check_header(self, header: NpyHeader) -> None:
        if header.fortran_order:
            raise ValidationError(
                f"{self._what}: expected a C-order .npy (np.ascontiguousarray). "
                "Received: fortran_order=True"
            )
        if header.dtype.str != self._dtype or header.shape != self._shape:
            raise ValidationError(
                f"{self._what}: expected dtype {self._dtype!r} and shape {self._shape}, as "
                f"declared. Received: dtype {header.dtype.str!r}, shape {header.shape}"
            )
