"""Inputs are checked before any training; errors never show private values."""

import numpy as np
import pytest

from veil import ValidationError, nn
from veil.engine import DPTrainer, _data, check_data

from .conftest import make_spec

CE = make_spec([nn.Dense(3, activation="softmax", input_shape=(None, 4))], (None, 4))
BCE = make_spec([nn.Dense(1, activation="sigmoid", input_shape=(None, 4))], (None, 4))
MSE = make_spec([nn.Dense(2, input_shape=(None, 4))], (None, 4))
IMG = make_spec(
    [nn.Convolution(1, 3, input_shape=(None, 3, 8, 8)), nn.Flatten(), nn.Dense(1, "sigmoid")],
    (None, 3, 8, 8),
)


def x4(n: int = 10) -> np.ndarray:
    return np.zeros((n, 4), np.float32)


def test_good_inputs_pass() -> None:
    check_data(CE, x4(), np.arange(10) % 3)
    check_data(CE, x4(), (np.arange(10) % 3).reshape(-1, 1).astype(np.uint8))
    check_data(CE, x4(), (np.arange(10) % 3).astype(np.float64))  # integral floats
    check_data(BCE, x4(), np.ones(10))
    check_data(BCE, x4(), np.zeros((10, 1), bool))
    check_data(MSE, x4(), np.zeros((10, 2)))
    check_data(IMG, np.zeros((5, 3, 8, 8), np.uint8), np.ones(5))
    check_data(CE, x4())


@pytest.mark.parametrize(
    ("spec", "x", "y", "message"),
    [
        (CE, x4(), np.arange(9) % 3, "Received: x has 10 rows, y has 9"),
        (CE, x4(), np.full(10, 3), "integer class labels in [0, 3). Received: labels outside"),
        (CE, x4(), np.full(10, -1), "labels outside that range"),
        (CE, x4(), np.full(10, 0.5), "non-integer or non-finite"),
        (CE, x4(), np.zeros((10, 3)), "Expected y of shape (N,) or (N, 1)"),
        (BCE, x4(), np.full(10, 2.0), "labels in {0, 1}"),
        (BCE, x4(), np.full(10, np.nan), "labels in {0, 1}"),
        (MSE, x4(), np.zeros((10, 2)) + np.inf, "y without NaN or infinite"),
        (MSE, x4(), np.zeros(10), "Expected y of shape (N, 2)"),
        (CE, np.zeros((10, 5), np.float32), np.zeros(10, int), "Received: x.shape=(10, 5)"),
        (CE, np.zeros((10, 4), complex), np.zeros(10, int), "numeric numpy array"),
        (CE, [[0.0] * 4] * 10, np.zeros(10, int), "Received: list"),
        (CE, x4(), np.array(["a"] * 10), "numeric numpy array"),
    ],
)
def test_bad_inputs_are_refused(spec: nn.ModelSpec, x, y, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        check_data(spec, x, y)
    assert message in str(err.value)


def test_nan_and_inf_in_x_are_refused_without_showing_rows() -> None:
    for bad in (np.nan, np.inf):
        x = x4()
        x[7, 2] = bad
        with pytest.raises(ValidationError, match="without NaN or infinite") as err:
            check_data(CE, x, np.zeros(10, int))
        assert "7" not in str(err.value)


def test_channels_last_images_get_a_hint() -> None:
    with pytest.raises(ValidationError, match="NCHW: channels first"):
        check_data(IMG, np.zeros((5, 8, 8, 3), np.uint8), np.ones(5))


def test_memmaps_are_scanned_in_chunks(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.npy"
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1000, 4))
    x[:] = 1.0
    x[-1, 0] = np.nan
    x.flush()
    monkeypatch.setattr(_data, "_CHUNK_BYTES", 16 * 100)  # 100 rows of 4 float32
    seen: list[int] = []
    chunks = _data._chunks
    monkeypatch.setattr(_data, "_chunks", lambda a: (seen.append(len(b)) or b for b in chunks(a)))
    mapped = np.load(path, mmap_mode="r")
    with pytest.raises(ValidationError, match="NaN"):
        check_data(CE, mapped, np.zeros(1000, int))
    assert seen == [100] * 10


def test_data_errors_come_before_any_training() -> None:
    trainer = DPTrainer(CE, seed=0)
    before = trainer.get_weights()
    x = x4(20)
    x[3] = np.nan
    with pytest.raises(ValidationError):
        trainer.fit(x, np.zeros(20, int), train_rows=np.arange(20), epochs=1, batch_size=5)
    with pytest.raises(ValidationError):
        trainer.step(x4(4), np.full(4, 9))
    assert trainer.steps_done == 0
    for name, value in trainer.get_weights().items():
        np.testing.assert_array_equal(value, before[name])


@pytest.mark.parametrize(
    ("rows", "val", "message"),
    [
        ([0, 1, 1], None, "without repeats"),
        ([0, 20], None, r"train_rows in \[0, 20\)"),
        ([0.5], None, "1-D array of row indices"),
        ([], None, "at least one training row"),
        ([0, 1, 2], [2, 3], "disjoint"),
    ],
)
def test_row_selections_are_checked(rows, val, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DPTrainer(CE, seed=0).fit(
            x4(20),
            np.zeros(20, int),
            train_rows=np.array(rows),
            val_rows=val,
            epochs=1,
            batch_size=5,
        )
