"""Mocks the node makes for an asset whose owner sent none: from the declaration only."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from veil.server.services.bounds import Bounds, mid_half
from veil.server.services.upload_declarations import FULL_RANGE, AssetDecl

__all__ = ["GENERATED_MOCK_ROWS", "generated_mock", "generated_shape"]

GENERATED_MOCK_ROWS = 100


def generated_mock(decl: AssetDecl) -> np.ndarray:
    """A mock made from the declaration only: shape, dtype and bounds, never values.

    The seed comes from the same public facts, so the mock is the same whatever the
    private values are.
    """
    dtype = np.dtype(decl.dtype)
    low, high = _mock_bounds(decl)
    facts = json.dumps([decl.name, decl.dtype, list(decl.shape), low.tolist(), high.tolist()])
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(facts.encode()).digest()[:8]))
    shape = generated_shape(decl)
    # One (low, high) per channel (axis 1), broadcast over the axes after it.
    along = (1, -1, *([1] * (len(shape) - 2))) if len(shape) > 1 else (1,)
    low, high = low.reshape(along), high.reshape(along)
    if dtype.kind == "f":
        # mid + half * u stays finite where high - low may not (bounds may span the
        # whole of float64).
        mid, half = mid_half(low, high)
        values = mid + half * rng.uniform(-1.0, 1.0, size=shape)
        return np.clip(values, low, high).astype(dtype)
    values = np.clip(np.floor(low + (high - low + 1) * rng.random(size=shape)), low, high)
    bottom, top = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    # Into the dtype through the float64s nearest its ends from inside: 2^63 - 1, say,
    # is 2^63 as a float64, which int64 cannot hold.
    inside = [
        float(end) if float(end) == end else float(np.nextafter(float(end), toward))
        for end, toward in ((bottom, np.inf), (top, -np.inf))
    ]
    return np.clip(values, *inside).astype(dtype)


def generated_shape(decl: AssetDecl) -> tuple[int, ...]:
    return (min(decl.shape[0], GENERATED_MOCK_ROWS), *decl.shape[1:])


def _mock_bounds(decl: AssetDecl) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per channel: the declared bounds, else the dtype's full range."""
    bounds = decl.bounds or Bounds((FULL_RANGE[decl.dtype][0],), (FULL_RANGE[decl.dtype][1],))
    channels = decl.shape[1] if len(decl.shape) > 1 else 1
    low, high = bounds.arrays(channels)
    if np.dtype(decl.dtype).kind != "f":
        low, high = np.ceil(low), np.floor(high)
    return low, high
