import pytest

from veil import SpecError, nn


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: nn.Convolution(1, (3,)),
            "Convolution expects kernel_size of two positive ints (or one for both sides). "
            "Received: kernel_size=(3,)",
        ),
        (lambda: nn.Convolution(0, 3), "expects filters of a positive int. Received: filters=0"),
        (lambda: nn.Convolution(True, 3), "Received: filters=True"),
        (lambda: nn.Convolution(1, 3, padding=-1), "padding of two ints >= 0"),
        (lambda: nn.Convolution(1, 3, activation="gelu"), "Received: activation='gelu'"),
        (lambda: nn.Dense(2.5), "Dense expects units of a positive int. Received: units=2.5"),
        (lambda: nn.Dropout(1.0), "Dropout expects rate of a finite number >= 0.0 and < 1.0"),
        (lambda: nn.Dropout(float("nan")), "Received: rate=nan"),
        (lambda: nn.MaxPool(0), "MaxPool expects pool_size"),
        (lambda: nn.GroupNorm(0), "GroupNorm expects groups of a positive int"),
        (lambda: nn.Normalization([0.0], [0.0]), "std[0] of a finite number >= 1e-06"),
        (lambda: nn.Normalization([], 1.0), "mean of a number or a non-empty list"),
        (lambda: nn.Rescaling(float("inf")), "Received: scale=inf"),
        (lambda: nn.Dense(3, input_shape=(1, 28, 28)), "batch axis first as None"),
        (lambda: nn.Dense(3, input_shape=(None,)), "Received: input_shape=(None,)"),
        (lambda: nn.SGD(momentum=1.0), "SGD expects momentum"),
        (
            lambda: nn.Adam(lr=0),
            "Adam expects lr of a finite number > 0.0 and <= 1000000.0. Received: lr=0",
        ),
        (
            lambda: nn.SGD(lr=1e308),
            "SGD expects lr of a finite number > 0.0 and <= 1000000.0. Received: lr=1e+308",
        ),
        (
            lambda: nn.LeakyReLU(slope=1e39),
            "LeakyReLU expects slope of a finite number >= -1000000.0 and <= 1000000.0. "
            "Received: slope=1e+39",
        ),
    ],
)
def test_arguments_are_validated_with_expected_and_received(make, message: str) -> None:
    with pytest.raises(SpecError) as err:
        make()
    assert message in str(err.value)


def test_batchnorm_is_refused_with_the_reason_and_groupnorm() -> None:
    with pytest.raises(SpecError, match="GroupNorm") as err:
        nn.BatchNorm()
    assert "per-example clipping" in str(err.value).lower()
    for name in ("BatchNorm", "BatchNormalization", "BatchNorm2d"):
        with pytest.raises(SpecError, match="GroupNorm"):
            nn.layer_from_dict({"class_name": name, "config": {}})


def test_unknown_class_is_refused_listing_the_whitelist() -> None:
    with pytest.raises(SpecError) as err:
        nn.layer_from_dict({"class_name": "Lambda", "config": {}})
    assert "Allowed:" in str(err.value)
    assert "Convolution" in str(err.value)
    assert "class_name='Lambda'" in str(err.value)


def test_unknown_or_missing_config_keys_are_refused() -> None:
    with pytest.raises(SpecError, match="unknown keys: \\['bias'\\]"):
        nn.Dense.from_config({"units": 3, "bias": False})
    with pytest.raises(SpecError, match="\\['units'\\], which are required"):
        nn.Dense.from_config({})
    with pytest.raises(SpecError, match="keys 'class_name' and 'config'"):
        nn.layer_from_dict({"class_name": "Dense", "config": {"units": 1}, "code": "x"})


@pytest.mark.parametrize(
    ("layer", "shape_in", "shape_out", "params"),
    [
        (nn.Convolution(1, (3, 3)), (None, 1, 28, 28), (None, 1, 26, 26), 10),
        (nn.Convolution(8, 3, stride=2, padding=1), (None, 3, 50, 50), (None, 8, 25, 25), 224),
        (nn.MaxPool((2, 2)), (None, 1, 26, 26), (None, 1, 13, 13), 0),
        (nn.AvgPool(3, stride=1), (None, 2, 5, 5), (None, 2, 3, 3), 0),
        (nn.Flatten(), (None, 2, 5, 5), (None, 50), 0),
        (nn.Dense(10), (None, 50), (None, 10), 510),
        (nn.GroupNorm(2), (None, 4, 5, 5), (None, 4, 5, 5), 8),
        (nn.Normalization([0, 1], [1, 2]), (None, 2), (None, 2), 0),
        (nn.Softmax(), (None, 3), (None, 3), 0),
        (nn.Dropout(0.5), (None, 7), (None, 7), 0),
    ],
)
def test_shapes_and_params(layer: nn.Layer, shape_in, shape_out, params: int) -> None:
    assert layer.compute_output_shape(shape_in) == shape_out
    assert layer.count_params(list(shape_in)) == params
    assert layer.flops(shape_in) >= 0


def test_flops_count_multiply_adds() -> None:
    assert nn.Dense(10).flops((None, 50)) == 10 * (2 * 50 + 1)
    conv = nn.Convolution(2, 3)
    assert conv.flops((None, 1, 5, 5)) == 2 * 3 * 3 * (2 * 9 + 1)


@pytest.mark.parametrize(
    ("layer", "shape", "message"),
    [
        (nn.Dense(3), (None, 2, 5, 5), "add Flatten() before it"),
        (nn.Convolution(1, 4), (None, 1, 3, 3), "at least as large as kernel_size=(4, 4)"),
        (nn.Convolution(1, 3), (None, 30), "(None, channels, height, width)"),
        (nn.MaxPool(4), (None, 1, 3, 3), "pool_size=(4, 4)"),
        (nn.GroupNorm(3), (None, 4, 5, 5), "divisible by groups=3"),
        (nn.Normalization([0, 0, 0], 1.0), (None, 2), "Received: 3 values"),
    ],
)
def test_shapes_that_do_not_fit_are_refused(layer: nn.Layer, shape, message: str) -> None:
    with pytest.raises(SpecError) as err:
        layer.compute_output_shape(shape)
    assert message in str(err.value)


def test_final_activation_and_loss_inference() -> None:
    assert nn.final_activation([nn.Dense(1, activation="sigmoid")]) == "sigmoid"
    assert nn.final_activation([nn.Dense(3), nn.Softmax()]) == "softmax"
    assert nn.infer_loss([nn.Dense(1), nn.Sigmoid()]) == nn.BinaryCrossEntropy()
    assert nn.infer_loss([nn.Dense(3, activation="softmax")]) == nn.CrossEntropy()
    assert nn.infer_loss([nn.Dense(3, activation="relu")]) == nn.MeanSquaredError()
    assert nn.infer_loss([nn.Dense(3)]) == nn.MeanSquaredError()
