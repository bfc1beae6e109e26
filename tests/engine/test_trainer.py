import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from veil import ValidationError, nn
from veil.engine import DPTrainer, EpochInfo, StepInfo, _trainer

from .conftest import make_spec


def fit_once(trainer: DPTrainer, data, epochs: int = 1) -> list[StepInfo]:
    x, y = data
    steps: list[StepInfo] = []
    trainer.fit(
        x, y, train_rows=np.arange(len(x)), epochs=epochs, batch_size=16, on_step=steps.append
    )
    return steps


def assert_same_weights(a: DPTrainer, b: DPTrainer) -> None:
    wb = b.get_weights()
    for name, value in a.get_weights().items():
        np.testing.assert_array_equal(value, wb[name])


def test_a_seed_makes_runs_exactly_repeatable(cnn_spec: nn.ModelSpec, image_data) -> None:
    a, b = DPTrainer(cnn_spec, seed=5), DPTrainer(cnn_spec, seed=5)
    assert fit_once(a, image_data) == fit_once(b, image_data)
    assert_same_weights(a, b)
    c = DPTrainer(cnn_spec, seed=6)
    assert not np.array_equal(flat(c), flat(a))


def test_without_a_seed_every_trainer_differs(mlp_spec: nn.ModelSpec) -> None:
    assert not np.array_equal(flat(DPTrainer(mlp_spec)), flat(DPTrainer(mlp_spec)))


def flat(trainer: DPTrainer) -> np.ndarray:
    return np.concatenate([w.ravel() for w in trainer.get_weights().values()])


def save_and_load(trainer: DPTrainer, path) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = trainer.checkpoint()
    save_file(tensors, str(path), metadata={"veil": json.dumps(meta)})
    with open(path, "rb") as handle:  # metadata travels in the safetensors header
        header_size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_size))
    return load_file(str(path)), json.loads(header["__metadata__"]["veil"])


@pytest.mark.parametrize("which", ["cnn_spec", "mlp_spec"])
def test_checkpoint_resumes_exactly(which: str, request: pytest.FixtureRequest, tmp_path) -> None:
    spec = request.getfixturevalue(which)
    data = request.getfixturevalue("image_data" if which == "cnn_spec" else "table_data")
    x, y = data
    original = DPTrainer(spec, seed=1)
    original.step(x[:8], y[:8])
    tensors, meta = save_and_load(original, tmp_path / "ck.safetensors")
    resumed = DPTrainer(spec, seed=99)
    resumed.load_checkpoint(tensors, meta)
    assert_same_weights(original, resumed)
    assert resumed.steps_done == 1
    a, b = original.step(x[8:16], y[8:16]), resumed.step(x[8:16], y[8:16])
    assert a.loss == b.loss
    np.testing.assert_array_equal(a.preds, b.preds)
    assert fit_once(original, data) == fit_once(resumed, data)  # sampling state too
    assert_same_weights(original, resumed)


def test_checkpoint_is_checked(mlp_spec: nn.ModelSpec, cnn_spec: nn.ModelSpec) -> None:
    tensors, meta = DPTrainer(mlp_spec, seed=0).checkpoint()
    with pytest.raises(ValidationError, match="different model spec"):
        DPTrainer(cnn_spec, seed=0).load_checkpoint(tensors, meta)
    partial = {k: v for k, v in tensors.items() if k != "param.1.bias"}
    with pytest.raises(ValidationError, match=r"missing \['param.1.bias'\]"):
        DPTrainer(mlp_spec, seed=0).load_checkpoint(partial, meta)
    with pytest.raises(ValidationError, match="format 1"):
        DPTrainer(mlp_spec, seed=0).load_checkpoint(tensors, {**meta, "format": 7})


def test_should_stop_ends_after_the_current_step(mlp_spec: nn.ModelSpec, table_data) -> None:
    x, y = table_data
    steps: list[StepInfo] = []
    result = DPTrainer(mlp_spec, seed=0).fit(
        x,
        y,
        train_rows=np.arange(100),
        val_rows=np.arange(100, 120),
        epochs=4,
        batch_size=20,
        on_step=steps.append,
        should_stop=lambda: len(steps) >= 8,
    )
    assert result.stopped and result.steps_done == 8 and result.steps_total == 20
    assert result.epochs_done == 1 and result.steps_per_epoch == 5
    assert [s.step for s in steps] == list(range(1, 9))
    assert [s.epoch for s in steps] == [1] * 5 + [2] * 3


@pytest.mark.parametrize("cut", [3, 5, 7, 10])
def test_a_fit_resumed_from_a_checkpoint_is_the_uninterrupted_fit(
    cut: int, mlp_spec: nn.ModelSpec, table_data, tmp_path
) -> None:
    """Stopped after `cut` of 10 steps (mid-epoch, at an epoch's end, at the very end),
    checkpointed and resumed with start_step=cut: same steps, epochs, weights."""
    x, y = table_data
    common = dict(train_rows=np.arange(100), val_rows=np.arange(100, 120), epochs=2, batch_size=20)
    whole, whole_steps, whole_epochs = DPTrainer(mlp_spec, seed=3), [], []
    whole.fit(x, y, on_step=whole_steps.append, on_epoch=whole_epochs.append, **common)
    first, steps, epochs = DPTrainer(mlp_spec, seed=3), [], []
    first.fit(
        x,
        y,
        on_step=steps.append,
        on_epoch=epochs.append,
        should_stop=lambda: len(steps) >= cut,
        **common,
    )
    tensors, meta = save_and_load(first, tmp_path / "ck.safetensors")
    resumed = DPTrainer(mlp_spec, seed=99)
    resumed.load_checkpoint(tensors, meta)
    result = resumed.fit(
        x, y, on_step=steps.append, on_epoch=epochs.append, start_step=cut, **common
    )
    assert [(s.epoch, s.step) for s in steps] == [(s.epoch, s.step) for s in whole_steps]
    assert [e.epoch for e in epochs] == [e.epoch for e in whole_epochs] == [1, 2]
    assert result.steps_done == result.steps_total == 10
    assert_same_weights(whole, resumed)


def test_start_step_is_checked(mlp_spec: nn.ModelSpec, table_data) -> None:
    x, y = table_data
    for bad in (-1, 11, 2.0, True):
        with pytest.raises(ValidationError, match="start_step"):
            DPTrainer(mlp_spec, seed=0).fit(
                x, y, train_rows=np.arange(100), epochs=2, batch_size=20, start_step=bad
            )


def test_a_fit_reads_a_batch_and_computes_a_bounded_piece_at_a_time(monkeypatch) -> None:
    """What keeps a node flat through an IDC-size epoch (`benchmarks/epoch_memory.py`):
    a fit reads x one Poisson batch at a time (a memory-mapped dataset stays on disk),
    and steps and validates on pieces whose layer outputs fit in `_ACTIVATION_BYTES`."""
    monkeypatch.setattr(_trainer, "_ACTIVATION_BYTES", 1 << 16)
    spec = make_spec(
        [
            nn.Rescaling(1 / 255, input_shape=(None, 2, 8, 8)),
            nn.Convolution(4, 3, activation="relu"),
            nn.MaxPool(2),
            nn.Flatten(),
            nn.Dense(1),
            nn.Sigmoid(),
        ],
        (None, 2, 8, 8),
    )
    reads: list[int] = []

    class Recorded(np.ndarray):
        def __getitem__(self, key: object) -> np.ndarray:
            out = np.asarray(super().__getitem__(key))
            reads.append(len(out))
            return out

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(600, 2, 8, 8), dtype=np.uint8).view(Recorded)
    y = rng.integers(0, 2, size=600).astype(np.float32)
    trainer = DPTrainer(spec, seed=0)
    pieces: list[int] = []
    trainer.module.register_forward_pre_hook(lambda _, args: pieces.append(len(args[0])))
    steps: list[StepInfo] = []
    trainer.fit(
        x,
        y,
        train_rows=np.arange(500),
        val_rows=np.arange(500, 600),
        epochs=1,
        batch_size=100,
        on_step=steps.append,
    )
    floats = 2 * (2 * 8 * 8) + 4 * 6 * 6 + 2 * (4 * 3 * 3) + 2  # each layer's output
    assert trainer._chunk == trainer._eval_rows == (1 << 16) // (4 * floats) < 100
    assert reads[: len(steps)] == [s.batch_size_actual for s in steps]  # one read a step
    assert max(reads) < 200 and sum(reads[len(steps) :]) == 100  # then validation
    assert pieces and max(pieces) <= trainer._chunk


def test_epoch_reports_raw_validation_metrics(mlp_spec: nn.ModelSpec, table_data) -> None:
    x, y = table_data
    trainer = DPTrainer(mlp_spec, seed=0)
    epochs: list[EpochInfo] = []
    result = trainer.fit(
        x,
        y,
        train_rows=np.arange(90),
        val_rows=np.arange(90, 120),
        epochs=2,
        batch_size=30,
        on_epoch=epochs.append,
    )
    assert [e.epoch for e in epochs] == [1, 2] and all(e.validation.n == 30 for e in epochs)
    assert [e.epoch for e in result.history] == [1, 2]
    loss, accuracy, n = trainer.evaluate(x, y, rows=np.arange(90, 120))
    assert (epochs[-1].val_loss, epochs[-1].val_accuracy, n) == (loss, accuracy, 30)
    assert 0 <= accuracy <= 1 and 0 <= loss <= mlp_spec.loss_bound


def test_mse_has_no_accuracy_and_losses_are_clipped() -> None:
    spec = make_spec([nn.Dense(2, input_shape=(None, 3))], (None, 3), loss_bound=0.5)
    trainer = DPTrainer(spec, seed=0)
    x = np.ones((6, 3), np.float32)
    y = np.full((6, 2), 100.0, np.float32)
    loss, accuracy, n = trainer.evaluate(x, y)
    assert (loss, accuracy, n) == (0.5, None, 6)
    result = trainer.step(x, y)
    assert result.loss == 0.5 and result.preds.shape == (6, 2)


def test_step_returns_probabilities_before_the_update(cnn_spec: nn.ModelSpec, image_data) -> None:
    x, y = image_data
    trainer = DPTrainer(cnn_spec, seed=0)
    result = trainer.step(x[:5], y[:5])
    assert result.preds.shape == (5, 1) and ((result.preds > 0) & (result.preds < 1)).all()
    assert 0 < result.loss <= cnn_spec.loss_bound
    with pytest.raises(ValidationError, match="at least one row"):
        trainer.step(x[:0], y[:0])


def test_dp_cannot_be_switched_off(mlp_spec: nn.ModelSpec, table_data) -> None:
    x, y = table_data
    trainer = DPTrainer(mlp_spec, seed=0)
    for kwargs in (
        {"noise_multiplier": 0.0},
        {"max_grad_norm": -1.0},
        {"noise_multiplier": float("nan")},
    ):
        with pytest.raises(ValidationError, match="cannot be switched off"):
            trainer.step(x[:4], y[:4], **kwargs)
    # Nor made so small that float32 flushes it to zero: no noise at all.
    with pytest.raises(ValidationError, match="flushes a smaller one to zero"):
        trainer.step(x[:4], y[:4], noise_multiplier=0.3, max_grad_norm=3.9e-38)


def test_device_is_checked(mlp_spec: nn.ModelSpec) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ValidationError, match="CUDA is not available"):
            DPTrainer(mlp_spec, device="cuda")
    with pytest.raises(ValidationError, match="torch device"):
        DPTrainer(mlp_spec, device="abacus")
    with pytest.raises(ValidationError, match="seed"):
        DPTrainer(mlp_spec, seed=-1)


def test_to_torch_is_a_detached_copy(mlp_spec: nn.ModelSpec) -> None:
    trainer = DPTrainer(mlp_spec, seed=0)
    module = trainer.to_torch()
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    assert np.abs(flat(trainer)).sum() > 0
