"""Arrays kept in a database column: one safetensors blob, with JSON metadata.

Plain arrays and JSON, no pickle, so reading a blob back runs no code.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from safetensors import TensorSpec, serialize
from safetensors.numpy import load as load_bytes

__all__ = ["pack", "unpack"]

# dtype -> its name: numpy computes `dtype.name` in Python each time it is asked, which
# was two thirds of what `safetensors.numpy.save` spent on a step's 25 small arrays.
_DTYPE_NAMES: dict[np.dtype, str] = {}


def _spec(array: np.ndarray) -> TensorSpec:
    name = _DTYPE_NAMES.get(array.dtype)
    if name is None:
        name = _DTYPE_NAMES.setdefault(array.dtype, array.dtype.name)
    return TensorSpec(
        dtype=name, shape=array.shape, data_ptr=array.ctypes.data, data_len=array.nbytes
    )


def pack(arrays: dict[str, np.ndarray], meta: Any) -> bytes:
    """`arrays` (each made contiguous and little-endian, 0-d ones kept 0-d) and `meta`
    (JSON-safe) as one blob."""
    blob = {name: _little_endian(np.asarray(array, order="C")) for name, array in arrays.items()}
    specs = {name: _spec(array) for name, array in blob.items()}  # `blob` keeps their memory
    return serialize(specs, metadata={"veil": json.dumps(meta)})


def _little_endian(array: np.ndarray) -> np.ndarray:
    if array.dtype.byteorder == ">":
        return array.astype(array.dtype.newbyteorder("<"))
    return array


def unpack(data: bytes) -> tuple[dict[str, np.ndarray], Any]:
    """(the arrays, the metadata) of a `pack` blob; {} as metadata if it had none."""
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    return load_bytes(data), json.loads(header.get("__metadata__", {}).get("veil", "{}"))
