import json
import subprocess
import sys
from typing import Any

import pytest

from veil import SpecError, nn


def spec_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "format": 1,
        "input_shape": [None, 1, 28, 28],
        "layers": [
            {"class_name": "Convolution", "config": {"filters": 2, "kernel_size": [3, 3]}},
            {"class_name": "MaxPool", "config": {"pool_size": [2, 2]}},
            {"class_name": "Flatten", "config": {}},
            {"class_name": "Dense", "config": {"units": 1, "activation": "sigmoid"}},
        ],
        "loss": {"class_name": "BinaryCrossEntropy", "config": {}},
        "optimizer": {"class_name": "Adamax", "config": {"lr": 0.002}},
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "loss_bound": 10.0,
    }
    data.update(overrides)
    return data


def test_from_dict_to_dict_round_trip_through_json() -> None:
    spec = nn.ModelSpec.from_dict(spec_dict())
    again = nn.ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert spec.output_shape == (None, 1)
    assert spec.param_count == 2 * 9 + 2 + 2 * 13 * 13 + 1
    assert spec.flops_per_example > 0


def test_defaults_when_loss_optimizer_and_bound_are_absent() -> None:
    data = spec_dict()
    for key in ("loss", "optimizer", "loss_bound"):
        del data[key]
    spec = nn.ModelSpec.from_dict(data)
    assert spec.loss == nn.BinaryCrossEntropy()
    assert spec.optimizer == nn.Adamax()
    assert spec.loss_bound == nn.DEFAULT_LOSS_BOUND == 10.0
    mse = nn.ModelSpec.from_dict(
        spec_dict(
            loss=None,
            layers=[{"class_name": "Dense", "config": {"units": 2}}],
            input_shape=[None, 3],
        )
    )
    assert mse.loss == nn.MeanSquaredError()
    assert mse.loss_bound == 10.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pickle": "gASV"}, "unknown keys ['pickle']"),
        ({"format": 2}, "format 1. Received: format=2"),
        ({"format": True}, "Received: format=True"),
        ({"noise_multiplier": 0.0}, "DP-SGD cannot be switched off"),
        ({"noise_multiplier": float("nan")}, "Received: noise_multiplier=nan"),
        ({"max_grad_norm": float("inf")}, "Received: max_grad_norm=inf"),
        ({"max_grad_norm": "1.0"}, "Received: max_grad_norm='1.0'"),
        ({"loss_bound": -1.0}, "loss_bound of a finite number >= 1e-06"),
        # Under float's normal range times sigma, the noise would be flushed to zero.
        ({"loss_bound": 7e-308}, "loss_bound of a finite number >= 1e-06"),
        ({"max_grad_norm": 3.9e-38}, "max_grad_norm of a finite number >= 1e-06"),
        ({"input_shape": [1, 28, 28]}, "batch axis first as None"),
        ({"layers": []}, "list of 1 to 256 layers"),
        ({"layers": {"0": {}}}, "list of 1 to 256 layers"),
        ({"loss": {"class_name": "Hinge", "config": {}}}, "Unknown loss class_name"),
        ({"optimizer": {"class_name": "LBFGS", "config": {}}}, "Unknown optimizer class_name"),
        ({"optimizer": {"class_name": "SGD", "config": {"lr": -1}}}, "Received: lr=-1"),
    ],
)
def test_strict_parsing(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        nn.ModelSpec.from_dict(spec_dict(**overrides))
    assert message in str(err.value)


def test_missing_required_keys_are_named() -> None:
    data = spec_dict()
    del data["noise_multiplier"]
    with pytest.raises(SpecError, match=r"missing keys \['noise_multiplier'\]"):
        nn.ModelSpec.from_dict(data)


def test_shape_errors_name_the_layer_index_class_and_shapes() -> None:
    layers = spec_dict()["layers"]
    layers.insert(2, {"class_name": "Convolution", "config": {"filters": 1, "kernel_size": 20}})
    with pytest.raises(SpecError) as err:
        nn.ModelSpec.from_dict(spec_dict(layers=layers))
    text = str(err.value)
    assert text.startswith("Layer 2 (Convolution) after layer 1 (MaxPool):")
    assert "kernel_size=(20, 20)" in text
    assert "Received: input_shape=(None, 2, 13, 13)" in text
    assert err.value.detail["layer_index"] == 2


def test_bad_layer_entries_are_located() -> None:
    layers = spec_dict()["layers"]
    layers[1] = {"class_name": "MaxPool", "config": {"pool_size": "2"}}
    with pytest.raises(SpecError, match=r"^layers\[1\]: MaxPool expects pool_size"):
        nn.ModelSpec.from_dict(spec_dict(layers=layers))


def test_layer_input_shape_must_agree_with_the_flow() -> None:
    layers = spec_dict()["layers"]
    layers[3]["config"]["input_shape"] = [None, 7]
    with pytest.raises(
        SpecError,
        match=r"Layer 3 \(Dense\) after layer 2 \(Flatten\) was given input_shape=\(None, 7\)",
    ):
        nn.ModelSpec.from_dict(spec_dict(layers=layers))


def test_cross_entropy_needs_a_class_axis() -> None:
    with pytest.raises(
        SpecError, match="CrossEntropy expects the model output \\(None, classes\\)"
    ):
        nn.ModelSpec.from_dict(spec_dict(loss={"class_name": "CrossEntropy", "config": {}}))


def test_model_without_parameters_is_refused() -> None:
    layers = [{"class_name": "Flatten", "config": {}}, {"class_name": "Sigmoid", "config": {}}]
    with pytest.raises(SpecError, match="trainable parameters"):
        nn.ModelSpec.from_dict(spec_dict(layers=layers))


def test_size_limits() -> None:
    spec = nn.ModelSpec.from_dict(spec_dict())
    nn.ModelSpec.from_dict(
        spec_dict(), max_params=spec.param_count, max_flops=spec.flops_per_example
    )
    with pytest.raises(SpecError, match="at most 100 parameters") as err:
        nn.ModelSpec.from_dict(spec_dict(), max_params=100)
    assert err.value.detail["param_count"] == spec.param_count
    with pytest.raises(SpecError, match="FLOPs per example"):
        nn.ModelSpec.from_dict(spec_dict(), max_flops=1000)


def test_too_many_layers() -> None:
    layers = [{"class_name": "Dense", "config": {"units": 2}}] * 257
    with pytest.raises(SpecError, match="1 to 256 layers"):
        nn.ModelSpec.from_dict(spec_dict(input_shape=[None, 2], layers=layers, loss=None))


def test_importing_veil_nn_does_not_import_torch() -> None:
    code = (
        "import sys, veil.nn as nn; m = nn.Model(); m.add(nn.Dense(1, input_shape=(None, 2)));"
        "m.to_spec(); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_layer_outputting_more_than_a_row_may_hold_is_refused() -> None:
    """Within max_flops, a two-parameter padded convolution could output 626 MiB per row:
    refused at compile, with the layer and its output named."""
    with pytest.raises(SpecError, match=r"Layer 0 \(Convolution\) may output at most"):
        nn.ModelSpec.build(
            (None, 1, 8, 8),
            [nn.Convolution(1, 1, padding=6400, input_shape=(None, 1, 8, 8)), nn.Flatten()],
            loss=nn.MeanSquaredError(),
            optimizer=nn.SGD(),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        )


def test_a_model_holding_more_than_a_row_may_hold_over_all_layers_is_refused() -> None:
    """Each layer within its limit and the model within the node's FLOPs: Dense(800,000)
    then 253 ReLUs held 203 million values (813 MB) per row for the backward pass, and a
    red-team helper's eight such steps took 11 GB. Refused at compile, with the count."""
    layers = [nn.Dense(800_000, input_shape=(None, 4))] + [nn.ReLU() for _ in range(253)]
    with pytest.raises(SpecError, match=r"at most 16,777,216 values per row") as caught:
        nn.ModelSpec.build(
            (None, 4),
            [*layers, nn.Dense(1)],
            loss=nn.MeanSquaredError(),
            optimizer=nn.SGD(),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        )
    assert caught.value.detail == {"max_values": 1 << 24, "values": 4 + 800_000 * 254 + 1}
    just_within = [nn.Dense(1 << 20, input_shape=(None, 4))] + [nn.ReLU() for _ in range(14)]
    spec = nn.ModelSpec.build(
        (None, 4),
        [*just_within, nn.Dense(1)],
        loss=nn.MeanSquaredError(),
        optimizer=nn.SGD(),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    assert spec.flops_per_example < 500_000_000
