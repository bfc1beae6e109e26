import json
from typing import Any

import numpy as np
import pytest
import torch

from veil import SpecError, ValidationError, nn


def small_cnn(model: nn.Model | None = None) -> nn.Model:
    model = model or nn.Model()
    model.add(nn.Convolution(1, (3, 3), input_shape=(None, 1, 28, 28)))
    model.add(nn.MaxPool((2, 2)))
    model.add(nn.Convolution(2, (4, 4)))
    model.add(nn.MaxPool((2, 2)))
    return model


def test_add_infers_shapes_and_fails_at_once() -> None:
    model = small_cnn()
    assert model.output_shape == (None, 2, 5, 5)
    with pytest.raises(SpecError) as err:
        model.add(nn.Convolution(1, 6))
    assert str(err.value).startswith("Layer 4 (Convolution) after layer 3 (MaxPool):")
    assert "(None, 2, 5, 5)" in str(err.value)
    assert len(model.layers) == 4  # the refused layer was not added


def test_first_layer_needs_input_shape() -> None:
    with pytest.raises(SpecError, match="The first layer needs input_shape"):
        nn.Model().add(nn.Dense(3))
    with pytest.raises(SpecError, match="expects a veil.nn layer"):
        nn.Model().add(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_summary_lists_layers_shapes_and_params(capsys: pytest.CaptureFixture[str]) -> None:
    text = small_cnn().summary()
    assert text == capsys.readouterr().out.rstrip("\n")
    assert "Convolution" in text and "(None, 1, 26, 26)" in text
    assert "Total params: 44" in text


def test_to_spec_from_spec_round_trip() -> None:
    model = small_cnn()
    model.add(nn.Flatten())
    model.add(nn.Dense(1, activation="sigmoid"))
    spec = model.to_spec(optimizer=nn.SGD(0.1), noise_multiplier=2.0, loss_bound=5.0)
    assert spec["loss"] == {"class_name": "BinaryCrossEntropy", "config": {}}
    again = nn.Model.from_spec(json.loads(json.dumps(spec)))
    assert again.to_spec() == spec
    assert again.layers == model.layers


def test_default_spec_values() -> None:
    spec = small_cnn().to_spec()
    assert spec["optimizer"] == {"class_name": "Adamax", "config": {"lr": 0.002}}
    assert spec["loss"]["class_name"] == "MeanSquaredError"
    assert (spec["noise_multiplier"], spec["max_grad_norm"], spec["loss_bound"]) == (1.0, 1.0, 10.0)


class FakeModels:
    """The duck-typed client interface `Model` relies on (the client team implements it)."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.draft_layers: list[dict[str, Any]] = []
        self.compiled: dict[str, Any] | None = None

    def create(self, spec: dict[str, Any]) -> str:
        self.created.append(spec)
        return "pointer-II"

    def create_draft(self) -> "FakeModels":
        return self

    def add(self, layer_config: dict[str, Any]) -> list[int | None]:
        self.draft_layers.append(layer_config)
        spec = nn.ModelSpec.build(
            self.draft_layers[0]["config"]["input_shape"],
            [nn.layer_from_dict(c) for c in self.draft_layers] + [nn.Flatten(), nn.Dense(1)],
        )
        return list(spec.shapes[len(self.draft_layers) - 1])

    def compile(self, **kwargs: Any) -> str:
        self.compiled = kwargs
        return "pointer-I"


class FakeClient:
    def __init__(self) -> None:
        self.models = FakeModels()


def test_flow_two_sends_the_spec_and_returns_the_pointer() -> None:
    client = FakeClient()
    model = small_cnn()
    pointer = model.compile(to=client, loss=nn.BinaryCrossEntropy(), optimizer=nn.Adamax())
    assert pointer == "pointer-II"
    (sent,) = client.models.created
    assert sent == model.to_spec()
    assert json.loads(json.dumps(sent)) == sent
    assert nn.ModelSpec.from_dict(sent).loss == nn.BinaryCrossEntropy()


def test_flow_one_adds_remotely_then_compiles_remotely() -> None:
    client = FakeClient()
    model = small_cnn(nn.Model(to=client))
    assert [c["class_name"] for c in client.models.draft_layers] == [
        "Convolution",
        "MaxPool",
        "Convolution",
        "MaxPool",
    ]
    with pytest.raises(SpecError):
        model.add(nn.Dense(3))  # refused locally: never reaches the node
    assert len(client.models.draft_layers) == 4
    pointer = model.compile(to=client, loss=nn.BinaryCrossEntropy(), optimizer=nn.Adamax())
    assert pointer == "pointer-I"
    assert client.models.compiled == {
        "loss": {"class_name": "BinaryCrossEntropy", "config": {}},
        "optimizer": {"class_name": "Adamax", "config": {"lr": 0.002}},
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "loss_bound": None,
    }
    with pytest.raises(ValidationError, match="same client"):
        model.compile(to=FakeClient())


def test_flow_one_detects_a_node_that_disagrees() -> None:
    client = FakeClient()
    client.models.add = lambda layer_config: [None, 9]  # type: ignore[method-assign]
    with pytest.raises(SpecError, match="versions disagree"):
        nn.Model(to=client).add(nn.Dense(3, input_shape=(None, 4)))


def mlp() -> nn.Model:
    model = nn.Model()
    model.add(nn.Dense(8, activation="relu", input_shape=(None, 4)))
    model.add(nn.Dropout(0.1))
    model.add(nn.Dense(3, activation="softmax"))
    return model


def test_local_compile_fit_predict_evaluate(capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)
    model = mlp()
    assert model.compile(optimizer=nn.Adam(0.05), noise_multiplier=0.5) is None
    assert model.spec is not None and model.spec.loss == nn.CrossEntropy()
    result = model.fit(x, y, max_iter=2, batch_size=50, validation_split=0.25, seed=0)
    assert result.epochs_done == 2 and result.steps_done == 2 * 3
    assert "Epoch 2/2 - val_loss:" in capsys.readouterr().out
    probs = model.predict(x[:10])
    assert probs.shape == (10, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    metrics = model.evaluate(x, y)
    assert set(metrics) == {"loss", "accuracy"} and 0.0 <= metrics["accuracy"] <= 1.0


def test_local_fit_with_a_seed_repeats() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=100)
    first, second = mlp(), mlp()
    first.compile()
    second.compile()
    second.set_weights(first.get_weights())  # weights were drawn at compile
    for model in (first, second):
        model.fit(x, y, max_iter=1, batch_size=20, seed=7, verbose=False)
    for name, value in second.get_weights().items():
        np.testing.assert_array_equal(value, first.get_weights()[name])


def test_weights_round_trip_and_checks() -> None:
    model = mlp()
    model.compile()
    weights = model.get_weights()
    assert set(weights) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert weights["0.weight"].shape == (8, 4) and weights["0.weight"].dtype == np.float32
    model.set_weights({k: np.zeros_like(v) for k, v in weights.items()})
    assert np.allclose(model.predict(np.ones((2, 4), np.float32)), 1 / 3)
    bad = dict(weights, **{"0.weight": np.zeros((4, 8), np.float32)})
    with pytest.raises(
        ValidationError, match=r"'0.weight' of shape \(8, 4\).*Received: shape \(4, 8\)"
    ):
        model.set_weights(bad)
    with pytest.raises(
        ValidationError, match="dtype float32. Received: shape \\(8, 4\\), dtype float64"
    ):
        model.set_weights(dict(weights, **{"0.weight": weights["0.weight"].astype(np.float64)}))
    with pytest.raises(ValidationError, match=r"missing \['2.bias'\]"):
        model.set_weights({k: v for k, v in weights.items() if k != "2.bias"})


def test_published_weights_load_into_a_model_compiled_remotely() -> None:
    model = mlp()
    model.compile(to=FakeClient())
    weights = {k: np.full_like(v, 0.01) for k, v in model.get_weights().items()}
    model.set_weights(weights)
    assert model.predict(np.ones((1, 4), np.float32)).shape == (1, 3)


def test_to_torch_gives_probabilities() -> None:
    model = mlp()
    model.compile()
    module = model.to_torch()
    assert isinstance(module, torch.nn.Module)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with torch.no_grad():
        out = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, model.predict(x), rtol=1e-6)


def test_local_use_before_compile_is_refused() -> None:
    with pytest.raises(ValidationError, match="call compile\\(\\) first"):
        mlp().predict(np.zeros((1, 4), np.float32))
    with pytest.raises(SpecError, match="at least one layer"):
        nn.Model().compile()


def test_bad_validation_split() -> None:
    model = mlp()
    model.compile()
    with pytest.raises(ValidationError, match="validation_split"):
        model.fit(np.zeros((10, 4), np.float32), np.zeros(10, int), validation_split=1.0)
