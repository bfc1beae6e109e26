"""Arrays in a database column (`storage.blobs`): what goes in comes back, shape and all."""

from __future__ import annotations

import numpy as np

from veil.server.storage import blobs


def test_a_blob_gives_back_every_array_with_its_shape_dtype_and_values() -> None:
    grid = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = {
        "scalar": np.array(11.0, dtype=np.float32),  # an optimizer's step count is 0-d
        "view": grid[:, ::2],  # not contiguous
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 3), dtype=np.int64),
        "big_endian": np.arange(6, dtype=">f8").reshape(2, 3),  # comes back little-endian
    }
    back, meta = blobs.unpack(blobs.pack(arrays, {"format": 2, "names": ["a"]}))
    assert meta == {"format": 2, "names": ["a"]}
    assert back.keys() == arrays.keys()
    for name, array in arrays.items():
        assert back[name].shape == array.shape, name
        assert back[name].dtype == array.dtype.newbyteorder("<"), name
        np.testing.assert_array_equal(back[name], array)
