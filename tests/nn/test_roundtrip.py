"""One shared round trip for every layer, loss and optimizer: what travels to the node."""

import json

import pytest

from veil import nn

OBJECTS = [
    nn.Convolution(
        4, (3, 3), input_shape=(None, 1, 28, 28), stride=2, padding=1, activation="relu"
    ),
    nn.Convolution(2, 5),
    nn.MaxPool((2, 2)),
    nn.MaxPool(3, stride=1),
    nn.AvgPool(2),
    nn.AvgPool((2, 3), stride=(1, 2)),
    nn.Flatten(),
    nn.Dense(10),
    nn.Dense(1, activation="sigmoid", input_shape=(None, 30)),
    nn.Linear(3, activation="softmax"),
    nn.ReLU(),
    nn.LeakyReLU(),
    nn.LeakyReLU(slope=0.2),
    nn.Sigmoid(),
    nn.Tanh(),
    nn.Softmax(),
    nn.Dropout(0.25),
    nn.GroupNorm(4),
    nn.Rescaling(1 / 255),
    nn.Rescaling(2, offset=-1),
    nn.Normalization(0.5, 0.25),
    nn.Normalization([0.1, 0.2, 0.3], [1, 2, 3]),
    nn.BinaryCrossEntropy(),
    nn.CrossEntropy(),
    nn.MeanSquaredError(),
    nn.Adamax(),
    nn.Adam(lr=0.01),
    nn.SGD(lr=0.1, momentum=0.9),
    nn.RMSprop(),
]


@pytest.mark.parametrize("obj", OBJECTS, ids=repr)
def test_config_round_trip_is_exact_and_json(obj: nn.Layer) -> None:
    config = obj.get_config()
    rebuilt = type(obj).from_config(json.loads(json.dumps(config)))
    assert rebuilt.get_config() == config
    assert rebuilt == obj
    assert json.loads(json.dumps(config)) == config


def test_every_whitelisted_class_is_covered() -> None:
    covered = {type(obj).__name__ for obj in OBJECTS}
    assert set(nn.LAYERS) | set(nn.LOSSES) | set(nn.OPTIMIZERS) <= covered


@pytest.mark.parametrize("obj", [o for o in OBJECTS if isinstance(o, nn.Layer)], ids=repr)
def test_layer_dict_round_trip(obj: nn.Layer) -> None:
    data = json.loads(json.dumps(nn.layer_to_dict(obj)))
    assert data["class_name"] == type(obj).__name__
    assert nn.layer_from_dict(data) == obj


def test_linear_is_dense() -> None:
    assert nn.Linear is nn.Dense
    assert nn.layer_to_dict(nn.Linear(3))["class_name"] == "Dense"
