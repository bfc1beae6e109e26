import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from veil import SpecError, nn
from veil.engine import build_module
from veil.engine._build import is_fused

from .conftest import make_spec


def test_module_matches_the_spec(cnn_spec: nn.ModelSpec) -> None:
    module = build_module(cnn_spec, generator=torch.Generator().manual_seed(0))
    assert sum(p.numel() for p in module.parameters()) == cnn_spec.param_count
    assert [n for n, _ in module.named_parameters()] == [
        "1.weight",
        "1.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
        "8.weight",
        "8.bias",
    ]
    assert set(module.state_dict()) == {n for n, _ in module.named_parameters()}
    module.eval()
    x = torch.rand(3, 2, 8, 8) * 255
    out = module(x)
    assert tuple(out.shape) == (3, 1)
    assert ((out > 0) & (out < 1)).all()
    assert torch.allclose(torch.sigmoid(module(x, logits=True)), out)


def test_initialisation_follows_the_generator(mlp_spec: nn.ModelSpec) -> None:
    def weights(seed: int) -> torch.Tensor:
        module = build_module(mlp_spec, generator=torch.Generator().manual_seed(seed))
        return torch.cat([p.flatten() for p in module.parameters()])

    assert torch.equal(weights(1), weights(1))
    assert not torch.equal(weights(1), weights(2))
    assert not torch.equal(
        torch.cat([p.flatten() for p in build_module(mlp_spec).parameters()]), weights(1)
    )


def test_initialisation_leaves_the_global_rng_alone(mlp_spec: nn.ModelSpec) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_module(mlp_spec, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.rand(3), expected)


def test_fused_only_for_matching_final_activation_and_loss() -> None:
    sigmoid = [nn.Dense(1, activation="sigmoid", input_shape=(None, 2))]
    softmax = [nn.Dense(3, input_shape=(None, 2)), nn.Softmax()]
    assert is_fused(make_spec(sigmoid, (None, 2)))
    assert is_fused(make_spec(softmax, (None, 2)))
    assert not is_fused(make_spec(sigmoid, (None, 2), loss=nn.MeanSquaredError()))
    assert not is_fused(make_spec(softmax, (None, 2), loss=nn.BinaryCrossEntropy()))


def test_normalization_is_per_channel_and_not_state() -> None:
    spec = make_spec(
        [
            nn.Normalization([1.0, 2.0], [2.0, 4.0], input_shape=(None, 2, 1, 1)),
            nn.Flatten(),
            nn.Dense(1),
        ],
        (None, 2, 1, 1),
    )
    module = build_module(spec)
    x = torch.tensor([[[[3.0]], [[6.0]]]])
    assert torch.allclose(module.get_submodule("0")(x).flatten(), torch.tensor([1.0, 1.0]))
    assert "0.mean" not in module.state_dict()


def test_batchnorm_never_reaches_the_engine() -> None:
    with pytest.raises(SpecError, match="GroupNorm"):
        nn.ModelSpec.from_dict(
            {
                "format": 1,
                "input_shape": [None, 3],
                "layers": [
                    {"class_name": "Dense", "config": {"units": 2}},
                    {"class_name": "BatchNorm", "config": {}},
                ],
                "noise_multiplier": 1.0,
                "max_grad_norm": 1.0,
            }
        )


def test_predict_gives_probabilities(mlp_spec: nn.ModelSpec) -> None:
    from veil.engine import DPTrainer

    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    probs = DPTrainer(mlp_spec, seed=0).predict(x, batch_size=3)
    assert probs.shape == (7, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    channels=st.integers(1, 3),
    side=st.integers(2, 10),
    filters=st.integers(1, 4),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 1), st.integers(0, 1)),
    pool=st.integers(1, 2),
)
def test_spec_shapes_and_counts_match_torch(
    channels: int, side: int, filters: int, kernel, stride, padding, pool: int
) -> None:
    """The spec accepts a model exactly when torch can run it, with the same shapes."""
    conv = nn.Convolution(
        filters, kernel, input_shape=(None, channels, side, side), stride=stride, padding=padding
    )
    layers = [conv, nn.AvgPool(pool, stride=1), nn.Flatten(), nn.Dense(2)]
    try:
        spec = make_spec(layers, (None, channels, side, side))
    except SpecError:
        with pytest.raises(RuntimeError):
            reference = torch.nn.Conv2d(channels, filters, kernel, stride, padding)
            torch.nn.AvgPool2d(pool, 1)(reference(torch.zeros(1, channels, side, side)))
        return
    module = build_module(spec)
    x = torch.zeros(2, channels, side, side)
    for index, layer in enumerate(module.children()):
        x = layer(x)
        assert tuple(x.shape[1:]) == spec.shapes[index][1:]
    assert sum(p.numel() for p in module.parameters()) == spec.param_count
