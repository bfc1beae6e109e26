"""The DP-SGD core: per-example gradients, clipping, noise scale, Poisson sampling."""

import numpy as np
import pytest
import torch

from veil import nn
from veil.engine import DPTrainer, StepInfo, build_module
from veil.engine._data import input_tensor, target_tensor
from veil.engine._dpsgd import clip_and_sum, per_example_grads
from veil.engine._objective import Objective
from veil.engine._randomness import SecureRandomness, SeededRandomness
from veil.engine._sampling import sampling_rate, steps_per_epoch

from .conftest import make_spec


def loop_reference(module, objective, x, y, masks):
    """Per-example gradients the slow way: one backward pass per example."""
    grads = {name: [] for name, _ in module.named_parameters()}
    for i in range(x.shape[0]):
        module.zero_grad()
        out = module(x[i : i + 1], masks=[m[i : i + 1] for m in masks], logits=True)
        objective.per_example(out, y[i : i + 1]).sum().backward()
        for name, p in module.named_parameters():
            grads[name].append(p.grad.clone())
    return {name: torch.stack(g) for name, g in grads.items()}


@pytest.mark.parametrize("which", ["cnn_spec", "mlp_spec"])
def test_vmap_gradients_equal_a_per_example_loop(
    which: str, request: pytest.FixtureRequest
) -> None:
    spec = request.getfixturevalue(which)
    module = build_module(spec, generator=torch.Generator().manual_seed(0))
    objective = Objective.from_spec(spec)
    rng = np.random.default_rng(0)
    n = 6
    if which == "cnn_spec":
        x, _ = input_tensor(rng.integers(0, 256, size=(n, 2, 8, 8)), torch.device("cpu"))
        y, _ = target_tensor(objective, spec, rng.integers(0, 2, size=n), torch.device("cpu"))
        mask_shape = (n, 4)
    else:
        x, _ = input_tensor(rng.normal(size=(n, 5)), torch.device("cpu"))
        y, _ = target_tensor(objective, spec, rng.integers(0, 3, size=n), torch.device("cpu"))
        mask_shape = (n, 6)
    masks = [
        torch.bernoulli(torch.full(mask_shape, 0.7), generator=torch.Generator().manual_seed(1))
    ]
    params = {k: v.detach() for k, v in module.named_parameters()}
    fast, losses, _ = per_example_grads(module, objective)(
        params, dict(module.named_buffers()), x, y, masks
    )
    slow = loop_reference(module, objective, x, y, masks)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-6)
    assert losses.shape == (n,)


def test_clip_and_sum_clips_each_example_and_zeroes_non_finite() -> None:
    grads = {
        "w": torch.tensor([[3.0, 4.0], [0.3, 0.4], [float("nan"), 1.0]]),
        "b": torch.tensor([[0.0], [0.0], [1.0]]),
    }
    sums, norms = clip_and_sum(grads, max_grad_norm=1.0)
    torch.testing.assert_close(norms[:2], torch.tensor([5.0, 0.5]))
    torch.testing.assert_close(sums["w"], torch.tensor([0.6 + 0.3, 0.8 + 0.4]), atol=1e-5, rtol=0)
    torch.testing.assert_close(sums["b"], torch.tensor([0.0]))


def sgd_mse_spec(features: int, units: int, *, lr: float = 1.0, **kwargs: object) -> nn.ModelSpec:
    return make_spec(
        [nn.Dense(units, input_shape=(None, features))],
        (None, features),
        loss=nn.MeanSquaredError(),
        optimizer=nn.SGD(lr),
        **kwargs,
    )


def flat(weights: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([w.ravel() for w in weights.values()])


@pytest.mark.parametrize("batch", [1, 4])
def test_clipping_bounds_a_huge_example(batch: int) -> None:
    lr, clip = 0.5, 1.0
    spec = sgd_mse_spec(3, 2, lr=lr, max_grad_norm=clip)
    trainer = DPTrainer(spec, seed=0)
    x = np.full((batch, 3), 0.1, np.float32)
    x[0] = 1e6  # a gradient some 1e12 times the bound
    y = np.zeros((batch, 2), np.float32)
    before = flat(trainer.get_weights())
    trainer.step(x, y, noise_multiplier=1e-9)
    moved = np.linalg.norm(flat(trainer.get_weights()) - before)
    assert 0.5 * lr * clip / batch < moved <= lr * clip * (1 + 1e-5)


def test_a_non_finite_example_contributes_nothing() -> None:
    spec = sgd_mse_spec(2, 1, lr=0.1)
    start = {"0.weight": np.ones((1, 2), np.float32), "0.bias": np.zeros(1, np.float32)}
    good = np.array([[1.0, 2.0]], np.float32)
    overflow = np.array([[1e30, 1e30]], np.float32)  # its squared error is inf in float32
    moves = []
    for x in (good, np.concatenate([overflow, good])):
        trainer = DPTrainer(spec, seed=0)
        trainer.set_weights(start)
        trainer.step(x, np.zeros((len(x), 1), np.float32), noise_multiplier=1e-9)
        moves.append(flat(trainer.get_weights()) - flat(start))
    assert np.isfinite(moves[1]).all()
    np.testing.assert_allclose(moves[1], moves[0] / 2, rtol=1e-5)  # same sum, batch of 2


def noise_only_update(trainer: DPTrainer, features: int, units: int, **fit: object) -> np.ndarray:
    """Zero weights and zero targets make every per-example gradient exactly zero."""
    trainer.set_weights(
        {"0.weight": np.zeros((units, features), np.float32), "0.bias": np.zeros(units, np.float32)}
    )
    x = np.random.default_rng(0).normal(size=(100, features)).astype(np.float32)
    y = np.zeros((100, units), np.float32)
    steps: list[StepInfo] = []
    trainer.fit(
        x,
        y,
        train_rows=np.arange(100),
        epochs=1,
        on_step=steps.append,
        should_stop=lambda: True,
        **fit,
    )  # type: ignore[arg-type]
    assert len(steps) == 1
    return flat(trainer.get_weights())


@pytest.mark.parametrize("seed", [3, None], ids=["seeded", "secure"])
def test_noise_std_is_sigma_c_over_expected_batch(seed: int | None) -> None:
    sigma, clip, batch = 1.5, 2.0, 10  # q = 0.1 of 100 rows: expected batch 10
    spec = sgd_mse_spec(64, 64, noise_multiplier=sigma, max_grad_norm=clip)
    update = noise_only_update(DPTrainer(spec, seed=seed), 64, 64, batch_size=batch)
    expected = sigma * clip / batch
    assert abs(update.std() / expected - 1) < 0.05  # 4160 draws: ~1% standard error
    assert abs(update.mean()) < 5 * expected / np.sqrt(update.size)


def test_fit_overrides_and_step_normalise_by_their_own_batch() -> None:
    spec = sgd_mse_spec(64, 64)
    trainer = DPTrainer(spec, seed=4)
    update = noise_only_update(
        trainer, 64, 64, batch_size=25, noise_multiplier=0.5, max_grad_norm=1.0
    )
    assert abs(update.std() / (0.5 * 1.0 / 25) - 1) < 0.05
    trainer.set_weights(
        {"0.weight": np.zeros((64, 64), np.float32), "0.bias": np.zeros(64, np.float32)}
    )
    trainer.step(np.ones((8, 64), np.float32), np.zeros((8, 64), np.float32))
    assert abs(flat(trainer.get_weights()).std() / (1.0 * 1.0 / 8) - 1) < 0.05


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "seeded"])
def test_poisson_batches_average_q_n(secure: bool) -> None:
    random = (
        SecureRandomness()
        if secure
        else SeededRandomness(noise_seed=0, sampling_seed=0, device=torch.device("cpu"))
    )
    rows = np.arange(1000, 3000)
    q = sampling_rate(len(rows), 50)
    sizes = []
    for _ in range(400):
        batch = random.poisson(rows, q)
        assert np.all(np.diff(batch) > 0) and np.isin(batch, rows).all()
        sizes.append(len(batch))
    n = len(rows)
    assert abs(np.mean(sizes) - q * n) < 4 * np.sqrt(n * q * (1 - q) / 400)
    assert abs(np.var(sizes) / (n * q * (1 - q)) - 1) < 0.25


def test_step_count_and_rate_used_by_accounting() -> None:
    assert steps_per_epoch(455, 64) == 8
    assert sampling_rate(455, 64) == 64 / 455
    assert sampling_rate(10, 64) == 1.0 and steps_per_epoch(10, 64) == 1


def test_fit_batches_average_q_n_and_allow_empty_batches() -> None:
    spec = sgd_mse_spec(2, 1, lr=0.01)
    x = np.zeros((100, 2), np.float32)
    y = np.zeros((100, 1), np.float32)
    steps: list[StepInfo] = []
    result = DPTrainer(spec, seed=1).fit(
        x, y, train_rows=np.arange(100), epochs=3, batch_size=1, on_step=steps.append
    )
    sizes = [s.batch_size_actual for s in steps]
    assert result.steps_done == len(steps) == 300 and result.sampling_rate == 0.01
    assert 0 in sizes  # noise-only steps ran
    assert abs(np.mean(sizes) - 1.0) < 0.25
    assert steps[-1].samples_seen == sum(sizes)


@pytest.mark.parametrize("shape", [(5, 3, 7, 6), (5, 4)])
def test_bytes_become_the_same_floats_as_any_other_dtype(shape: tuple) -> None:
    """uint8 rows (images) skip the finiteness mask, which they cannot fail, and give the
    floats and layout the general path gives."""
    raw = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    fast, fast_ok = input_tensor(raw, torch.device("cpu"))
    slow, slow_ok = input_tensor(raw.astype(np.float64), torch.device("cpu"))
    assert fast.dtype == torch.float32 and torch.equal(fast, slow)
    assert fast.is_contiguous(memory_format=torch.channels_last) == (len(shape) == 4)
    assert fast_ok.tolist() == slow_ok.tolist() == [True] * shape[0]
    raw[0] = 7  # the tensor is a copy: the caller's rows are never written through
    assert not torch.equal(fast[0], torch.full_like(fast[0], 7.0))
