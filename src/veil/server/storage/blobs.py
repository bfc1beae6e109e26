"""Arrays kept in a database column: one safetensors blob, with JSON metadata.

Plain arrays and JSON, no pickle, so reading a blob back runs no code.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from safetensors.numpy import load as load_bytes
from safetensors.numpy import save as save_bytes

__all__ = ["pack", "unpack"]


def pack(arrays: dict[str, np.ndarray], meta: Any) -> bytes:
    """`arrays` (each made contiguous, 0-d ones kept 0-d) and `meta` (JSON-safe) as
    one blob."""
    blob = {name: np.asarray(array, order="C") for name, array in arrays.items()}
    return save_bytes(blob, metadata={"veil": json.dumps(meta)})


def unpack(data: bytes) -> tuple[dict[str, np.ndarray], Any]:
    """(the arrays, the metadata) of a `pack` blob; {} as metadata if it had none."""
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    return load_bytes(data), json.loads(header.get("__metadata__", {}).get("veil", "{}"))
