import torch
import torch.nn.functional as F

from veil import nn
from veil.engine._objective import Objective

from .conftest import make_spec


def objective(layers: list[nn.Layer], loss: nn.Loss, bound: float = 10.0) -> Objective:
    return Objective.from_spec(make_spec(layers, (None, 4), loss=loss, loss_bound=bound))


BCE = [nn.Dense(1, activation="sigmoid", input_shape=(None, 4))]
CE = [nn.Dense(3, input_shape=(None, 4)), nn.Softmax()]


def test_fused_bce_equals_naive_bce_on_moderate_logits() -> None:
    fused = objective(BCE, nn.BinaryCrossEntropy())
    assert fused.fused
    logits = torch.linspace(-6, 6, 25).reshape(-1, 1)
    y = (torch.arange(25) % 2).float().reshape(-1, 1)
    naive = F.binary_cross_entropy(torch.sigmoid(logits), y, reduction="none").flatten()
    torch.testing.assert_close(fused.per_example(logits, y), naive, rtol=1e-4, atol=1e-6)


def test_fused_ce_equals_naive_ce_on_moderate_logits() -> None:
    fused = objective(CE, nn.CrossEntropy())
    assert fused.fused
    logits = torch.randn(20, 3, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.arange(20) % 3
    naive = -torch.log(torch.softmax(logits, 1)[torch.arange(20), y])
    torch.testing.assert_close(fused.per_example(logits, y), naive, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.probabilities(logits), torch.softmax(logits, 1))


def test_fused_losses_stay_finite_and_exact_on_extreme_logits() -> None:
    bce = objective(BCE, nn.BinaryCrossEntropy())
    logits = torch.tensor([[1e4], [-1e4], [1e4], [-1e4]])
    y = torch.tensor([[1.0], [0.0], [0.0], [1.0]])
    loss = bce.per_example(logits, y)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, torch.tensor([0.0, 0.0, 1e4, 1e4]))
    ce = objective(CE, nn.CrossEntropy())
    loss = ce.per_example(torch.tensor([[1e4, -1e4, 0.0]]), torch.tensor([1]))
    torch.testing.assert_close(loss, torch.tensor([2e4]))


def test_naive_path_matches_keras_clipping() -> None:
    naive = objective([nn.Dense(1, input_shape=(None, 4))], nn.BinaryCrossEntropy())
    assert not naive.fused
    loss = naive.per_example(torch.tensor([[0.0], [1.5]]), torch.tensor([[1.0], [0.0]]))
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(
        loss, -torch.log(torch.tensor([1e-7, 1e-7])), rtol=0.02, atol=0
    )  # float32 1 - 1e-7


def test_reported_losses_are_clipped_to_the_bound() -> None:
    bce = objective(BCE, nn.BinaryCrossEntropy(), bound=2.0)
    losses = bce.per_example(torch.tensor([[50.0], [0.0]]), torch.tensor([[0.0], [0.0]]))
    torch.testing.assert_close(
        bce.clipped(losses), torch.tensor([2.0, float(torch.log(torch.tensor(2.0)))])
    )


def test_mse_and_accuracy() -> None:
    mse = objective([nn.Dense(2, input_shape=(None, 4))], nn.MeanSquaredError())
    out, y = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 0.0]])
    torch.testing.assert_close(mse.per_example(out, y), torch.tensor([5.0]))
    assert mse.correct(out, y) is None
    bce = objective(BCE, nn.BinaryCrossEntropy())
    probs = torch.tensor([[0.9], [0.2], [0.7]])
    assert bce.correct(probs, torch.tensor([[1.0], [0.0], [0.0]])).tolist() == [1.0, 1.0, 0.0]
