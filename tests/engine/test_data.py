"""What may be checked about data, and how rows that do not fit are handled.

Checks that can raise read shapes and dtypes only. A private value that does not fit
(a label outside the loss's range, NaN or infinity) is never an error: its row gets a
fixed contribution, with the same operations as any other row.
"""

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from veil import ValidationError, nn
from veil.engine import DPTrainer, _data, check_shapes, check_values

from .conftest import make_spec

CE = make_spec([nn.Dense(3, activation="softmax", input_shape=(None, 4))], (None, 4))
BCE = make_spec([nn.Dense(1, activation="sigmoid", input_shape=(None, 4))], (None, 4))
MSE = make_spec([nn.Dense(2, input_shape=(None, 4))], (None, 4))
IMG = make_spec(
    [nn.Convolution(1, 3, input_shape=(None, 3, 8, 8)), nn.Flatten(), nn.Dense(1, "sigmoid")],
    (None, 3, 8, 8),
)


def x4(n: int = 10) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)


def test_good_shapes_pass() -> None:
    check_shapes(CE, x4(), np.arange(10) % 3)
    check_shapes(CE, x4(), (np.arange(10) % 3).reshape(-1, 1).astype(np.uint8))
    check_shapes(BCE, x4(), np.zeros((10, 1), bool))
    check_shapes(MSE, x4(), np.zeros((10, 2)))
    check_shapes(IMG, np.zeros((5, 3, 8, 8), np.uint8), np.ones(5))
    check_shapes(CE, x4())


@pytest.mark.parametrize(
    ("spec", "x", "y", "message"),
    [
        (CE, x4(), np.arange(9) % 3, "Received: x has 10 rows, y has 9"),
        (CE, x4(), np.zeros((10, 3)), "Expected y of shape (N,) or (N, 1)"),
        (MSE, x4(), np.zeros(10), "Expected y of shape (N, 2)"),
        (CE, np.zeros((10, 5), np.float32), np.zeros(10, int), "Received: x.shape=(10, 5)"),
        (CE, np.zeros((10, 4), complex), np.zeros(10, int), "numeric numpy array"),
        (CE, [[0.0] * 4] * 10, np.zeros(10, int), "Received: list"),
        (CE, x4(), np.array(["a"] * 10), "numeric numpy array"),
    ],
)
def test_bad_shapes_and_dtypes_are_refused(spec: nn.ModelSpec, x, y, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        check_shapes(spec, x, y)
    assert message in str(err.value)


def test_shape_checks_never_read_a_value() -> None:
    class NoValues(np.ndarray):
        def __array__(self, *args, **kwargs):  # any read of the values lands here
            raise AssertionError("a value was read")

        def __getitem__(self, item):
            raise AssertionError("a value was read")

    x = np.zeros((10, 4), np.float32).view(NoValues)
    y = np.zeros(10, np.int64).view(NoValues)
    check_shapes(CE, x, y)


def test_channels_last_images_get_a_hint() -> None:
    with pytest.raises(ValidationError, match="NCHW: channels first"):
        check_shapes(IMG, np.zeros((5, 8, 8, 3), np.uint8), np.ones(5))


@pytest.mark.parametrize(
    ("spec", "y", "message"),
    [
        (CE, np.full(10, 3), r"integer class labels in \[0, 3\)"),
        (CE, np.full(10, 0.5), "integer class labels"),
        (BCE, np.full(10, 2.0), r"labels in \[0, 1\]"),
        (MSE, np.zeros((10, 2)) + np.inf, "finite labels"),
    ],
)
def test_check_values_names_what_is_wrong_in_data_you_may_see(spec, y, message) -> None:
    with pytest.raises(ValidationError, match=message):
        check_values(spec, x4(), y)


def test_check_values_scans_memmaps_in_chunks(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.npy"
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1000, 4))
    x[:] = 1.0
    x[-1, 0] = np.nan
    x.flush()
    monkeypatch.setattr(_data, "_CHUNK_BYTES", 16 * 100)  # 100 rows of 4 float32
    seen: list[int] = []
    chunks = _data._chunks
    monkeypatch.setattr(_data, "_chunks", lambda a: (seen.append(len(b)) or b for b in chunks(a)))
    with pytest.raises(ValidationError, match="NaN"):
        check_values(CE, np.load(path, mmap_mode="r"), None)
    assert seen == [100] * 10


# Rows that do not fit: a fixed contribution, never an error --------------------------

BAD_ROWS = {
    "label above the classes": (CE, lambda x, y: y.__setitem__(4, 7)),
    "negative label": (CE, lambda x, y: y.__setitem__(4, -1)),
    "fractional label": (CE, lambda x, y: y.__setitem__(4, 1.5)),
    "NaN label": (CE, lambda x, y: y.__setitem__(4, np.nan)),
    "BCE label 2": (BCE, lambda x, y: y.__setitem__(4, 2.0)),
    "NaN input": (CE, lambda x, y: x.__setitem__((4, 1), np.nan)),
    "infinite input": (BCE, lambda x, y: x.__setitem__((4, 0), np.inf)),
    "infinite MSE target": (MSE, lambda x, y: y.__setitem__(4, np.inf)),
}


def _batch(spec: nn.ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    x = x4(5).astype(np.float64)
    if spec is MSE:
        return x, np.zeros((5, 2))
    return x, np.array([0, 1, 0, 1, 0], dtype=np.float64)


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_row_that_does_not_fit_adds_a_zero_gradient(case: str) -> None:
    spec, spoil = BAD_ROWS[case]
    x, y = _batch(spec)
    spoil(x, y)
    spoiled = DPTrainer(spec, seed=3)
    result = spoiled.step(x, y)
    reference = DPTrainer(spec, seed=3)
    # The same step with row 4 left out of the gradient, normalised by the same 5 rows.
    reference._update(x[:4], y[:4], spec.noise_multiplier, spec.max_grad_norm, 5.0)
    for name, value in spoiled.get_weights().items():
        np.testing.assert_allclose(value, reference.get_weights()[name], rtol=0, atol=1e-7)
    assert np.isnan(result.metrics.losses[4]) and np.isfinite(result.metrics.losses[:4]).all()
    assert result.loss <= spec.loss_bound  # a mean of bounded losses, the bad one at the bound


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_rows_that_do_not_fit_never_raise_in_fit_or_evaluate(case: str) -> None:
    spec, spoil = BAD_ROWS[case]
    x, y = _batch(spec)
    spoil(x, y)
    trainer = DPTrainer(spec)
    trainer.fit(x, y, train_rows=np.arange(3), val_rows=np.arange(3, 5), epochs=2, batch_size=2)
    metrics = trainer.evaluate_rows(x, y)
    assert metrics.n == 5 and np.isfinite(metrics.loss)
    assert np.isfinite(trainer.predict(x[:4])).all()


def _ops(trainer: DPTrainer, x: np.ndarray, y: np.ndarray) -> list[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.step(x, y)
        trainer.evaluate_rows(x, y)
    return [event.name for event in prof.events()]


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_row_that_does_not_fit_takes_the_same_operations(case: str) -> None:
    spec, spoil = BAD_ROWS[case]
    x, y = _batch(spec)
    bad_x, bad_y = x.copy(), y.copy()
    spoil(bad_x, bad_y)
    good, bad = DPTrainer(spec, seed=1), DPTrainer(spec, seed=1)
    _ops(good, x, y), _ops(bad, bad_x, bad_y)  # warm both up alike
    assert _ops(good, x, y) == _ops(bad, bad_x, bad_y)


def test_a_model_that_overflows_is_handled_like_a_bad_row() -> None:
    """Rescaling at its limit, twice, overflows float32 for large inputs only."""
    spec = make_spec(
        [
            nn.Rescaling(1e6, input_shape=(None, 4)),
            nn.Rescaling(1e6),
            nn.Rescaling(1e6),
            nn.Rescaling(1e6),
            nn.Dense(3, activation="softmax"),
        ],
        (None, 4),
    )
    x = np.zeros((4, 4), np.float32)
    x[1] = 1e30  # x * 1e24 overflows: inf - inf is NaN
    trainer = DPTrainer(spec)
    result = trainer.step(x, np.zeros(4))
    assert np.isfinite(result.loss) and result.loss <= spec.loss_bound
    assert torch.isfinite(torch.cat([p.flatten() for p in trainer.module.parameters()])).all()


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
