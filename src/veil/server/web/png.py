"""A PNG encoder for 8-bit grey or RGB pixels: enough for mock previews, no imaging library."""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["encode_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY, _RGB = 0, 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array, height x width (grey) or height x width x 3 (RGB)."""
    if pixels.dtype != np.uint8 or not (
        pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)
    ):
        raise ValueError(
            f"encode_png expects uint8 pixels of shape (h, w) or (h, w, 3). "
            f"Received: {pixels.dtype} {pixels.shape}"
        )
    height, width = pixels.shape[:2]
    colour = _GREY if pixels.ndim == 2 else _RGB
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    # Each scanline starts with its filter type; 0 = none.
    raw = np.hstack([np.zeros((height, 1), np.uint8), rows]).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )
