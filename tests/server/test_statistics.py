"""Per-channel bounds, and the charged statistics release behind `Normalization.adapt`."""

from __future__ import annotations

import numpy as np
import pytest

import veil
from tests.conftest import make_ds
from veil import nn
from veil.privacy import gaussian

DELTA = 1e-5
LOW, HIGH = [0.0, 100.0, -1.0], [1.0, 5000.0, 1.0]


def _table(n: int = 400, seed: int = 0) -> np.ndarray:
    """Three columns of very different scales, inside LOW..HIGH."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [rng.uniform(0.2, 0.4, n), rng.normal(2500, 300, n), rng.uniform(-0.5, 0.9, n)], axis=1
    ).astype(np.float32)


@pytest.fixture
def table(admin) -> np.ndarray:
    x = _table()
    admin.datasets.upload(
        name="Table", assets={"x": x, "y": np.zeros(len(x), np.int64)},
        bounds={"x": (LOW, HIGH), "y": (0, 1)},
    )  # fmt: skip
    return x


def test_bounds_may_be_declared_per_channel(node, admin, ds, table) -> None:
    x_ptr = ds.datasets["Table"]["x"]
    assert x_ptr.bounds == (LOW, HIGH)
    mock = x_ptr.mock
    assert ((mock >= LOW) & (mock <= HIGH)).all()
    assert mock[:, 1].min() > 100  # drawn in its own channel's range
    bad = _table(50)
    bad[7, 2] = 1.5  # inside the overall range, outside its channel's
    with pytest.raises(veil.ValidationError, match=r"declared bounds \[\[0, 100, -1\].*row 7"):
        admin.datasets.upload(name="Bad", assets={"x": bad}, bounds={"x": (LOW, HIGH)})
    for bounds, message in (
        (([0.0, 1.0], [1.0, 2.0]), "one per channel"),
        (([0.0, 1.0, 2.0], [1.0, 0.5, 3.0]), "low <= high"),
        (("a", 1.0), "bounds"),
    ):
        with pytest.raises(veil.ValidationError, match=message):
            admin.datasets.upload(name="Bad", assets={"x": _table(50)}, bounds={"x": bounds})
    assert "Bad" not in admin.datasets.names()


def test_statistics_are_quoted_then_released_noised_and_charged(node, admin, table) -> None:
    ds = make_ds(admin, node, budget=50.0)
    x_ptr = ds.datasets["Table"]["x"]
    quote = x_ptr.quote_statistics(epsilon=10.0)
    assert quote["rows"] == 400 and quote["channels"] == 3
    assert quote["cost"] == pytest.approx(gaussian(quote["sigma"]).epsilon(DELTA))
    assert quote["spent"] == 0.0 and ds.privacy_budget.spent == 0.0  # a quote spends nothing
    released = x_ptr.statistics(epsilon=10.0)
    assert released.kind == "statistics" and released.cost == pytest.approx(quote["cost"])
    assert ds.privacy_budget.spent == pytest.approx(released.spent_after)
    stats = released.get()
    np.testing.assert_allclose(stats["mean"], table.mean(axis=0), rtol=0.05, atol=0.05)
    assert stats["std"][1] == pytest.approx(table[:, 1].std(), rel=0.5)
    noise = released.noise()["moments"]
    assert noise == pytest.approx(quote["sigma"] * np.sqrt(6) / 400)  # sqrt(2C) / n


def test_normalization_adapt_builds_the_layer_from_a_release(node, admin, table, capsys) -> None:
    ds = make_ds(admin, node, budget=50.0)
    x_ptr = ds.datasets["Table"]["x"][0:200]
    layer = nn.Normalization.adapt(x_ptr, epsilon=5.0)
    assert "costs epsilon" in capsys.readouterr().out  # said before it was spent
    assert layer.input_shape == (None, 3) and len(layer.mean) == 3 and min(layer.std) > 0
    assert abs(layer.mean[1] - table[:200, 1].mean()) < 500
    model = nn.Model()
    model.add(layer)
    model.add(nn.Dense(2, activation="softmax"))
    model.compile(to=ds)  # the constants travel in the spec like any others
    local = nn.Normalization.adapt(table)
    np.testing.assert_allclose(local.mean, table.mean(axis=0), rtol=1e-5)


def test_statistics_need_bounds_and_refuse_bad_noise(node, admin, ds) -> None:
    admin.datasets.upload(
        name="Mocked", assets={"x": _table(50)}, mock={"x": _table(5, seed=1)}
    )  # float without bounds: allowed with a mock, but nothing bounds a row's effect
    with pytest.raises(veil.ValidationError, match="need declared bounds"):
        ds.datasets["Mocked"]["x"].statistics(epsilon=1.0)
    images = np.zeros((20, 3, 4, 4), np.uint8)
    admin.datasets.upload(name="Images", assets={"images": images})  # uint8: full range
    stats = ds.datasets["Images"]["images"].statistics(epsilon=5.0).get()
    assert stats["mean"].shape == (3,) and (stats["std"] > 0).all()
    pointer = ds.datasets["Images"]["images"]
    for kwargs in ({}, {"epsilon": 1e9}, {"sigma": 0.01}, {"epsilon": -1.0}):
        with pytest.raises(veil.ValidationError):
            pointer.statistics(**kwargs)


@pytest.mark.parametrize("bounds", [(-1.7e308, 1.7e308), (1e308, 1.7e308)])
def test_statistics_of_bounds_as_wide_as_float64_are_finite(node, admin, bounds) -> None:
    """A float64 asset may declare (nearly) the whole of float64, whose width or centre
    overflows: the release is charged, so its result must be readable and finite,
    the mean inside the bounds and the std at most half their width."""
    low, high = bounds
    x = np.random.default_rng(0).uniform(low / 2 + high / 2 - 1.0, low / 2 + high / 2 + 1.0, 60)
    admin.datasets.upload(name="Wide", assets={"x": x.reshape(-1, 3)}, bounds={"x": bounds})
    ds = make_ds(admin, node, budget=50.0)
    stats = ds.datasets["Wide"]["x"].statistics(epsilon=2.0).get()
    mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    assert mean.shape == std.shape == (3,)
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    assert ((mean >= low) & (mean <= high)).all()
    assert ((std > 0) & (std <= high / 2 - low / 2)).all()
