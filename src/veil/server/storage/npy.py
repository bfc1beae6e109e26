"""The `.npy` format as the node accepts it: plain numeric arrays, parsed without pickle.

Headers are parsed from the first bytes of a stream with numpy's own safe parser
(`np.lib.format`, which evaluates literals only); the array data itself is never read
here. Only bool, signed and unsigned integers and floats of at most 8 bytes, in
little-endian or byte-order-free layout and C order, are accepted: nothing that could
hold a Python object or need a pickle.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from veil._exceptions import ValidationError

__all__ = [
    "MAX_HEADER_BYTES",
    "NpyHeader",
    "check_dtype",
    "header_bytes",
    "iter_npy",
    "parse_header",
]

# numpy refuses headers above 10 000 bytes by default; a real header is under 200.
MAX_HEADER_BYTES = 10_000
_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class NpyHeader:
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    offset: int  # bytes before the data: magic, version, length, header

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def total_bytes(self) -> int:
        return self.offset + self.data_bytes


def check_dtype(dtype: object, *, what: str = "dtype") -> np.dtype:
    """The dtype if the node stores it, else a ValidationError saying what is allowed."""
    try:
        parsed = np.dtype(dtype)  # type: ignore[call-overload]
    except (TypeError, ValueError, SyntaxError):
        raise ValidationError(
            f"{what} must be a numpy dtype such as 'uint8' or '<f4'. Received: {dtype!r}"
        ) from None
    if parsed.hasobject or parsed.fields is not None or parsed.subdtype is not None:
        raise ValidationError(
            f"{what} must be a plain numeric dtype; object and structured dtypes are refused "
            f"because they can carry pickles. Received: {parsed.str!r}"
        )
    if parsed.kind not in "biuf" or parsed.itemsize > 8:
        raise ValidationError(
            f"{what} must be bool, an integer or a float of at most 8 bytes. "
            f"Received: {parsed.str!r}"
        )
    if parsed.byteorder == ">":
        little = parsed.newbyteorder("<").str
        raise ValidationError(
            f"{what} must be little-endian; convert with arr.astype({little!r}). "
            f"Received: {parsed.str!r}"
        )
    return parsed


def parse_header(prefix: bytes | bytearray) -> NpyHeader | None:
    """The header at the start of `prefix`; None while more bytes are needed."""
    if len(prefix) < len(_MAGIC):
        if not _MAGIC.startswith(bytes(prefix)):
            raise _not_npy()
        return None
    if not prefix.startswith(_MAGIC):
        raise _not_npy()
    if len(prefix) < 8:
        return None
    version = (prefix[6], prefix[7])
    if version == (1, 0):
        length_bytes = 2
    elif version == (2, 0):
        length_bytes = 4
    else:
        raise ValidationError(
            f"Expected a .npy file of format version 1.0 or 2.0. Received: version {version}"
        )
    if len(prefix) < 8 + length_bytes:
        return None
    header_len = int.from_bytes(prefix[8 : 8 + length_bytes], "little")
    if header_len > MAX_HEADER_BYTES:
        raise ValidationError(
            f"Expected a .npy header of at most {MAX_HEADER_BYTES} bytes. Received: {header_len}"
        )
    offset = 8 + length_bytes + header_len
    if len(prefix) < offset:
        return None
    stream = io.BytesIO(bytes(prefix[:offset]))
    try:
        np.lib.format.read_magic(stream)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read(stream)
    except (ValueError, TypeError, SyntaxError) as exc:
        raise ValidationError(f"The .npy header is malformed: {exc}") from None
    return NpyHeader(
        dtype=check_dtype(dtype, what="The .npy dtype"),
        shape=tuple(int(d) for d in shape),
        fortran_order=bool(fortran_order),
        offset=offset,
    )


def header_bytes(dtype: np.dtype, shape: Sequence[int]) -> bytes:
    """The .npy header for a C-order array of this dtype and shape."""
    fields = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(int(d) for d in shape),
    }
    out = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(out, fields)
    except ValueError:  # header longer than 65535 bytes: only format 2.0 can say it
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, fields)
    return out.getvalue()


def iter_npy(array: np.ndarray, rows: range, *, chunk_bytes: int) -> Iterator[bytes]:
    """The .npy bytes of `array[rows]`, a bounded chunk at a time (works on a memmap)."""
    yield header_bytes(array.dtype, (len(rows), *array.shape[1:]))
    row_bytes = max(1, math.prod(array.shape[1:]) * array.dtype.itemsize)
    per_chunk = max(1, chunk_bytes // row_bytes)
    for first in range(0, len(rows), per_chunk):
        block = rows[first : first + per_chunk]
        yield np.ascontiguousarray(array[block.start : block.stop : block.step]).tobytes()


def _not_npy() -> ValidationError:
    return ValidationError(
        "Expected the bytes of a .npy file (they start with b'\\x93NUMPY'); pickles and other "
        "formats are refused."
    )
