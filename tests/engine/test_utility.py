"""DP training is useful: Wisconsin breast cancer at epsilon <= 3, delta = 1e-5."""

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from veil import nn
from veil.engine import DPTrainer, sampling_rate, steps_per_epoch

NOISE_MULTIPLIER = 2.0
MAX_GRAD_NORM = 1.0
EPOCHS = 5
BATCH_SIZE = 64
DELTA = 1e-5


def epsilon(q: float, steps: int) -> float:
    """Poisson-subsampled Gaussian, composed `steps` times, under RDP (integer orders)."""
    accountant = RdpAccountant(orders=[float(order) for order in range(2, 257)])
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(NOISE_MULTIPLIER))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(DELTA)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_logistic_regression_reaches_90_percent_at_epsilon_3(seed: int) -> None:
    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32), y, test_size=0.2, stratify=y, random_state=seed
    )
    # Standardise with the training split's statistics, declared as public constants.
    normalise = nn.Normalization(
        x_train.mean(0).tolist(), x_train.std(0).tolist(), input_shape=(None, 30)
    )
    spec = nn.ModelSpec.build(
        (None, 30),
        [normalise, nn.Dense(1, activation="sigmoid")],
        optimizer=nn.Adam(lr=0.1),
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=MAX_GRAD_NORM,
    )
    assert spec.loss == nn.BinaryCrossEntropy()
    trainer = DPTrainer(spec, seed=seed)
    n = len(x_train)
    result = trainer.fit(
        x_train, y_train, train_rows=np.arange(n), epochs=EPOCHS, batch_size=BATCH_SIZE
    )
    assert result.steps_done == EPOCHS * steps_per_epoch(n, BATCH_SIZE) == 40
    eps = epsilon(sampling_rate(n, BATCH_SIZE), result.steps_done)
    assert eps <= 3.0
    _, accuracy, _ = trainer.evaluate(x_test, y_test)
    assert accuracy >= 0.90, f"accuracy {accuracy:.3f} at epsilon {eps:.2f}"
