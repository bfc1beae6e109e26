"""Mocks the node makes for an asset whose owner sent none: from the declaration only."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

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
    facts = json.dumps([decl.name, decl.dtype, list(decl.shape), [low, high]])
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(facts.encode()).digest()[:8]))
    shape = generated_shape(decl)
    if dtype.kind == "f":
        return rng.uniform(low, high, size=shape).astype(dtype)
    return rng.integers(int(low), int(high), size=shape, endpoint=True).astype(dtype)


def generated_shape(decl: AssetDecl) -> tuple[int, ...]:
    return (min(decl.shape[0], GENERATED_MOCK_ROWS), *decl.shape[1:])


def _mock_bounds(decl: AssetDecl) -> tuple[float, float]:
    if decl.bounds is not None:
        low, high = decl.bounds
    else:
        low, high = FULL_RANGE[decl.dtype]
    if np.dtype(decl.dtype).kind != "f":
        low, high = math.ceil(low), math.floor(high)
    return low, high
