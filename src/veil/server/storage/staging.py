"""A `.npy` file arriving in chunks: checked, hashed and renamed into place only if whole.

The header is checked against the expected dtype and shape as soon as it is complete,
before any data is kept; the byte count against the header as bytes pass; with
`check_values`, every value as it passes (finite, and inside the declared bounds); the
SHA-256 at the end. Only then does the file appear under its final name, next to its
checksum.

Only the data owner uploads, and may see its own data: these errors name the row and
the value. Training later relies on them (no private value is ever checked where a
data scientist could see the answer).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veil._exceptions import ValidationError
from veil.server.storage.arrays import AtomicFile
from veil.server.storage.npy import NpyHeader, parse_header

__all__ = ["CheckedNpyFile", "Limits", "checksum_path"]


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
        check_values: bool = False,
        bounds: Limits | None = None,
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
        self._values = _ValueCheck(dtype, shape, bounds, what) if check_values else None

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
        if self._values is not None:
            # The bytes of this write that lie past the header are values.
            first = self._header.offset - (self.received - len(data))
            self._values.feed(memoryview(data)[max(0, first) :])
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


@dataclass(frozen=True)
class Limits:
    """Declared bounds as the checker uses them: one low and high per channel (axis 1),
    or one of each for every value, and how to name them in an error."""

    low: np.ndarray
    high: np.ndarray
    text: str


class _ValueCheck:
    """Checks an array's values as its bytes stream past, whatever the chunking."""

    def __init__(
        self, dtype: str, shape: tuple[int, ...], bounds: Limits | None, what: str
    ) -> None:
        self._dtype = np.dtype(dtype)
        self._row_items = max(1, int(np.prod(shape[1:], dtype=np.int64)))
        # A flat element i lies in channel (i // inner) % channels.
        self._inner = max(1, int(np.prod(shape[2:], dtype=np.int64)))
        self._channels = shape[1] if len(shape) > 1 else 1
        self._bounds = bounds
        self._what = what
        self._pending = bytearray()
        self._seen = 0  # items checked so far

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        size = self._dtype.itemsize
        if self._pending:  # complete the value split across the last chunk and this one
            take = min(size - len(self._pending), len(view))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < size:
                return
            self._check(np.frombuffer(bytes(self._pending), dtype=self._dtype))
            self._pending.clear()
        whole = len(view) - len(view) % size
        if whole:
            self._check(np.frombuffer(view[:whole], dtype=self._dtype))
        self._pending += view[whole:]

    def _check(self, values: np.ndarray) -> None:
        bad = ~np.isfinite(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
        if self._bounds is not None:
            low, high = self._bounds.low, self._bounds.high
            if low.size > 1 or high.size > 1:
                index = self._seen + np.arange(values.size, dtype=np.int64)
                channel = (index // self._inner) % self._channels
                low, high = (
                    np.broadcast_to(low, (self._channels,))[channel],
                    np.broadcast_to(high, (self._channels,))[channel],
                )
            with np.errstate(invalid="ignore"):
                bad |= (values < low) | (values > high)
        if not bad.any():
            self._seen += values.size
            return
        index = int(np.flatnonzero(bad)[0])
        item = self._seen + index
        rule = "finite values"
        if self._bounds is not None:
            rule += f" within the declared bounds {self._bounds.text}"
        raise ValidationError(
            f"{self._what}: expected {rule}. Received: {values[index]!r} at row "
            f"{item // self._row_items} (element {item}). Nothing was stored; fix the data "
            "or the declaration and upload again.",
            row=item // self._row_items,
        )
