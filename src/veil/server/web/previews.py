"""Mock previews for the datasets page: a strip of images, or the first rows as a table.

Only an asset's mock is read here: public by construction (the owner's mock, or one
made from the declared shape, dtype and bounds). The private array never is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["MockRows", "image_layout", "image_strip", "mock_rows"]

Layout = Literal["hw", "chw", "hwc"]
IMAGES = 8  # images in a strip
ROWS = 5  # rows in a table
COLUMNS = 8  # values per table row
_MIN_SIDE = 8  # smaller "images" are more likely features than pixels
_SIDE = 64  # images are scaled to about this height (nearest neighbour)
_GAP = 2


def image_layout(shape: Sequence[int]) -> Layout | None:
    """How an asset of public shape (rows, ...) holds images, if it looks like it does."""
    dims = tuple(shape[1:])
    if len(dims) == 2 and min(dims) >= _MIN_SIDE:
        return "hw"
    if len(dims) == 3 and dims[0] in (1, 3) and min(dims[1:]) >= _MIN_SIDE:
        return "chw"
    if len(dims) == 3 and dims[2] in (1, 3) and min(dims[:2]) >= _MIN_SIDE:
        return "hwc"
    return None


def _value_range(images: np.ndarray, bounds: tuple[float, float] | None) -> tuple[float, float]:
    if bounds is not None:
        return bounds
    if images.dtype == np.uint8:
        return 0.0, 255.0
    finite = images[np.isfinite(images)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def image_strip(
    mock: np.ndarray, *, layout: Layout, bounds: tuple[float, float] | None
) -> np.ndarray:
    """The first mock images side by side, as uint8 pixels (h, w) or (h, w, 3).

    Values map from the declared bounds (else the dtype's or the mock's own range) to
    0-255; small images are enlarged, large ones thinned, so a strip stays a few kB.
    """
    images = mock[:IMAGES]
    if layout == "chw":
        images = images.transpose(0, 2, 3, 1)
    elif layout == "hw":
        images = images[..., None]
    if len(images) == 0:
        return np.full((1, 1), 255, np.uint8)
    low, high = _value_range(images, bounds)
    scaled = (images.astype(np.float64) - low) / ((high - low) or 1.0) * 255
    pixels = np.nan_to_num(np.clip(scaled, 0, 255)).astype(np.uint8)
    height = pixels.shape[1]
    if height > 2 * _SIDE:
        step = math.ceil(height / (2 * _SIDE))
        pixels = pixels[:, ::step, ::step]
    factor = max(1, _SIDE // pixels.shape[1])
    pixels = pixels.repeat(factor, axis=1).repeat(factor, axis=2)
    n, h, w, c = pixels.shape
    strip = np.full((h, n * w + (n - 1) * _GAP, c), 255, np.uint8)
    for i, image in enumerate(pixels):
        strip[:, i * (w + _GAP) : i * (w + _GAP) + w] = image
    return strip[..., 0] if c == 1 else strip


@dataclass(frozen=True)
class MockRows:
    """The first mock rows, flattened, as text; `more` when values were left out."""

    rows: list[list[str]]
    more: bool


def mock_rows(mock: np.ndarray) -> MockRows:
    """Up to ROWS rows of COLUMNS values; a 1-D mock (labels) shows as one line of them."""
    first = mock[: COLUMNS + 1][None] if mock.ndim == 1 else mock[:ROWS]
    first = first.reshape(len(first), -1)
    text = [[f"{v:.4g}" if first.dtype.kind == "f" else str(v) for v in row] for row in first]
    return MockRows(rows=[row[:COLUMNS] for row in text], more=first.shape[1] > COLUMNS)
