"""Layer-wise clipping gives the clipped sums of the vmap reference, for every layer kind
and each way a layer's norm is taken, with rows that did not fit and dropout."""

import numpy as np
import pytest
import torch

from veil import nn
from veil.engine import DPTrainer, build_module
from veil.engine._data import input_tensor, target_tensor
from veil.engine._dpsgd import clip_and_sum, per_example_grads
from veil.engine._layerwise import (
    backprops,
    clip_layerwise,
    conv_grads_unfold,
    conv_grads_vmap,
    supports,
)
from veil.engine._objective import Objective

from .conftest import make_spec

CPU = torch.device("cpu")


def _dense_softmax() -> nn.ModelSpec:
    return make_spec(
        [
            nn.Normalization(0.0, 2.0, input_shape=(None, 5)),
            nn.Dense(6, activation="leaky_relu"),
            nn.Dropout(0.2),
            nn.Dense(3, activation="softmax"),
        ],
        (None, 5),
    )


def _dense_mse() -> nn.ModelSpec:
    return make_spec(
        [nn.Dense(4, activation="tanh", input_shape=(None, 3)), nn.Dense(2)],
        (None, 3),
        loss=nn.MeanSquaredError(),
    )


def _conv_built() -> nn.ModelSpec:
    """Convolutions with many positions: each example's gradient is built."""
    return make_spec(
        [
            nn.Rescaling(1 / 255, input_shape=(None, 2, 9, 9)),
            nn.Convolution(3, 3, padding=1, activation="relu"),
            nn.MaxPool(2),
            nn.Convolution(4, 2, stride=2, activation="sigmoid"),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Dense(1),
            nn.Sigmoid(),
        ],
        (None, 2, 9, 9),
    )


def _conv_ghost() -> nn.ModelSpec:
    """A wide convolution on a small map: T (p + d) < p d, so its norm is a ghost norm."""
    return make_spec(
        [
            nn.Convolution(16, 3, input_shape=(None, 8, 4, 4), activation="relu"),
            nn.Dropout(0.5),
            nn.Convolution(12, 2),
            nn.Flatten(),
            nn.Dense(3),
            nn.Softmax(),
        ],
        (None, 8, 4, 4),
        loss=nn.CrossEntropy(),
    )


SPECS = {
    "dense_softmax": _dense_softmax,
    "dense_mse": _dense_mse,
    "conv_built": _conv_built,
    "conv_ghost": _conv_ghost,
}


def _batch(spec: nn.ModelSpec, objective: Objective, n: int) -> tuple:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, *spec.input_shape[1:])).astype(np.float32) * 50
    x[1] = np.nan  # a row that does not fit: valid False, its input zeroed
    classes = int(spec.output_shape[1])
    y = rng.integers(0, classes, size=n) if objective.kind == "ce" else rng.random((n, classes))
    xt, x_ok = input_tensor(x, CPU)
    yt, y_ok = target_tensor(objective, spec, y.astype(np.float32), CPU)
    return xt, yt, x_ok & y_ok


def _masks(spec: nn.ModelSpec, n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    inputs = (spec.input_shape, *spec.shapes[:-1])
    return [
        torch.bernoulli(torch.full((n, *shape[1:]), 1 - layer.rate), generator=generator)
        / (1 - layer.rate)
        for layer, shape in zip(spec.layers, inputs, strict=True)
        if isinstance(layer, nn.Dropout)
    ]


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("clip", [1e-3, 1e3])
def test_layerwise_sums_equal_the_vmap_reference(name: str, clip: float) -> None:
    spec = SPECS[name]()
    module = build_module(spec, generator=torch.Generator().manual_seed(0))
    assert supports(module)
    objective = Objective.from_spec(spec)
    n = 7
    x, y, valid = _batch(spec, objective, n)
    valid[4] = False  # e.g. a padding slot or a label out of range
    masks = _masks(spec, n)
    params = {k: v.detach() for k, v in module.named_parameters()}
    grads, ref_losses, ref_out = per_example_grads(module, objective)(params, {}, x, y, masks)
    expected, expected_norms = clip_and_sum(grads, clip, valid)
    terms = backprops(module, objective, x, y, masks)
    sums, norms = clip_layerwise(terms, clip, valid)
    assert sums.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(sums[key], expected[key], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(norms[valid], expected_norms[valid], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms.losses, ref_losses)
    torch.testing.assert_close(terms.outputs, ref_out)
    assert all(p.grad is None for p in module.parameters())


def test_a_non_finite_gradient_contributes_nothing() -> None:
    spec = _dense_mse()
    module = build_module(spec, generator=torch.Generator().manual_seed(0))
    objective = Objective.from_spec(spec)
    x = torch.ones(3, 3)
    y = torch.zeros(3, 2)
    y[0, 0] = float("inf")  # as if a label slipped through: a non-finite backprop
    sums, _ = clip_layerwise(backprops(module, objective, x, y, []), 1.0, None)
    alone, _ = clip_layerwise(backprops(module, objective, x[1:], y[1:], []), 1.0, None)
    for key in sums:
        assert torch.isfinite(sums[key]).all()
        torch.testing.assert_close(sums[key], alone[key])


def test_group_norm_keeps_vmap(cnn_spec: nn.ModelSpec, mlp_spec: nn.ModelSpec) -> None:
    assert not DPTrainer(cnn_spec, seed=0)._layerwise
    assert DPTrainer(mlp_spec, seed=0)._layerwise


def test_layerwise_and_vmap_steps_agree(mlp_spec: nn.ModelSpec, table_data) -> None:
    """A whole seeded step (dropout, noise, optimizer) lands on the same weights either way."""
    x, y = table_data
    x = x.copy()
    x[3] = np.inf
    fast, reference = DPTrainer(mlp_spec, seed=7), DPTrainer(mlp_spec, seed=7)
    reference._layerwise = False
    for trainer in (fast, reference):
        trainer.step(x[:40], y[:40])
    for key, value in reference.get_weights().items():
        np.testing.assert_allclose(fast.get_weights()[key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("stride, padding", [((1, 1), (1, 1)), ((2, 2), (0, 0))])
def test_both_ways_of_building_conv_gradients_agree(
    stride: tuple, padding: tuple, layout: torch.memory_format
) -> None:
    """A convolution's per-example gradients are built by vmap or by unfolded patches,
    whichever is faster on the device (on an H200 both win on some layers): held equal
    here, on the CPU, so CI checks both ways' arithmetic, in both layouts (channels-last
    patches are copied in another order and put back in the weight's)."""
    layer = build_module(_conv_built(), generator=torch.Generator().manual_seed(0)).get_submodule(
        "1"
    )
    layer.stride, layer.padding = stride, padding
    a = torch.randn(5, 2, 9, 9).contiguous(memory_format=layout)
    g = torch.randn_like(layer.pre_activation(a))
    assert a.is_contiguous(memory_format=layout)
    torch.testing.assert_close(
        conv_grads_unfold(layer, a, g), conv_grads_vmap(layer, a, g), rtol=1e-4, atol=1e-5
    )


def test_each_convolution_takes_the_faster_builder(monkeypatch) -> None:
    from types import SimpleNamespace

    from veil.engine import _layerwise

    clock, calls = [0.0], []

    def slow(layer, a, g):  # noqa: ANN001, ANN202
        clock[0] += 1.0
        return conv_grads_vmap(layer, a, g)

    def fast(layer, a, g):  # noqa: ANN001, ANN202
        clock[0] += 0.001
        calls.append(a.shape[0])
        return conv_grads_unfold(layer, a, g)

    monkeypatch.setattr(_layerwise, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(_layerwise, "BUILDERS", (slow, fast))
    monkeypatch.setattr(_layerwise, "_FASTEST", {})
    built = build_module(_conv_built(), generator=torch.Generator().manual_seed(0))
    layer = built.get_submodule("1")
    a = torch.randn(6, 2, 9, 9)
    g = torch.randn_like(layer.pre_activation(a))
    first = _layerwise._conv_weight_grads(layer, a, g)
    assert len(calls) == 5  # a warm-up and three timed runs, then used
    again = _layerwise._conv_weight_grads(layer, a[:4], g[:4])  # another batch size
    assert len(calls) == 6  # the choice is kept: no second timing
    torch.testing.assert_close(again, first[:4])
