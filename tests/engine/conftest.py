import numpy as np
import pytest

from veil import nn


def make_spec(layers: list[nn.Layer], input_shape: tuple, **kwargs: object) -> nn.ModelSpec:
    return nn.ModelSpec.build(input_shape, layers, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def cnn_spec() -> nn.ModelSpec:
    """A tiny CNN with every kind of parametrised layer, ending in Sigmoid + BCE."""
    return make_spec(
        [
            nn.Rescaling(1 / 255, input_shape=(None, 2, 8, 8)),
            nn.Convolution(4, 3, padding=1, activation="relu"),
            nn.GroupNorm(2),
            nn.MaxPool(2),
            nn.Convolution(4, 2, stride=2, activation="tanh"),
            nn.AvgPool(2),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Dense(1),
            nn.Sigmoid(),
        ],
        (None, 2, 8, 8),
        optimizer=nn.Adam(0.01),
    )


@pytest.fixture
def mlp_spec() -> nn.ModelSpec:
    return make_spec(
        [
            nn.Normalization(0.0, 2.0, input_shape=(None, 5)),
            nn.Dense(6, activation="leaky_relu"),
            nn.Dropout(0.2),
            nn.Dense(3, activation="softmax"),
        ],
        (None, 5),
        optimizer=nn.SGD(0.1, momentum=0.9),
    )


@pytest.fixture
def image_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 2, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 2, size=(64, 1)).astype(np.float32)
    return x, y


@pytest.fixture
def table_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=120)
    return x, y
