"""Mock previews and the PNG encoder, without a node."""

from __future__ import annotations

import io

import numpy as np
import pytest

from veil.server.web.png import encode_png
from veil.server.web.previews import image_layout, image_strip, mock_rows


@pytest.mark.parametrize(
    "pixels",
    [
        np.arange(6 * 5, dtype=np.uint8).reshape(6, 5),
        np.random.default_rng(0).integers(0, 256, (7, 3, 3), dtype=np.uint8),
    ],
)
def test_png_round_trips(pixels: np.ndarray) -> None:
    image = pytest.importorskip("PIL.Image")
    decoded = np.asarray(image.open(io.BytesIO(encode_png(pixels))))
    np.testing.assert_array_equal(decoded, pixels)


def test_png_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match=r"Received: float32 \(2, 2\)"):
        encode_png(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="Received: uint8"):
        encode_png(np.zeros((2, 2, 4), np.uint8))


def test_image_layouts_come_from_the_public_shape() -> None:
    assert image_layout((10, 1, 28, 28)) == "chw"
    assert image_layout((10, 3, 50, 50)) == "chw"
    assert image_layout((10, 32, 32, 3)) == "hwc"
    assert image_layout((10, 8, 8)) == "hw"
    for shape in [(10,), (10, 30), (10, 4, 4), (10, 2, 28, 28), (10, 1, 1, 28), (10, 3, 4, 5, 6)]:
        assert image_layout(shape) is None, shape


def test_image_strips_scale_values_and_sizes() -> None:
    digits = np.full((20, 1, 8, 8), 16, np.uint8)
    strip = image_strip(digits, layout="chw", bounds=(0, 16))
    assert strip.shape == (64, 8 * 64 + 7 * 2) and strip.dtype == np.uint8
    assert strip[:, :64].min() == 255  # 16 is the top of the declared bounds
    colour = np.zeros((3, 40, 40, 3), np.float32)
    colour[..., 0] = 1.0
    strip = image_strip(colour, layout="hwc", bounds=None)  # no bounds: the mock's own range
    assert strip.shape == (40, 3 * 40 + 2 * 2, 3) and strip[0, 0].tolist() == [255, 0, 0]
    big = image_strip(np.zeros((1, 512, 512), np.uint8), layout="hw", bounds=None)
    assert big.shape == (128, 128)
    nan = image_strip(np.full((1, 1, 9, 9), np.nan, np.float32), layout="chw", bounds=None)
    assert nan.shape == (63, 63)
    assert image_strip(np.zeros((0, 9, 9), np.uint8), layout="hw", bounds=None).shape == (1, 1)


def test_mock_rows_show_the_first_values_as_text() -> None:
    wide = mock_rows(np.arange(60, dtype=np.float32).reshape(6, 10) / 4)
    assert len(wide.rows) == 5 and wide.rows[0][:3] == ["0", "0.25", "0.5"] and wide.more
    assert all(len(row) == 8 for row in wide.rows)
    labels = mock_rows(np.array([1, 0, 1]))
    assert labels.rows == [["1", "0", "1"]] and not labels.more
    assert mock_rows(np.arange(20)).more
