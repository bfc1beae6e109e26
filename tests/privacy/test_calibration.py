import math
from typing import Any

import numpy as np
import pytest

from veil import ValidationError
from veil.privacy import (
    SIGMA_MAX,
    SIGMA_MIN,
    Cart,
    RdpCurve,
    calibrate_fit,
    calibrate_sigma,
    poisson_gaussian,
    quote_fit,
)

DELTA = 1e-5
N = 1000
TRAIN, VAL = np.arange(0, 900), np.arange(900, 1000)


def _used_cart() -> Cart:
    cart = Cart()
    cart.ensure_source("d", N)
    cart.mark_pool("d", TRAIN)
    cart.add_sampled("d", q=0.1, sigma=2.0, steps=100)
    cart.add_gaussian_rows("d", VAL, sigma=2.0, count=10)
    cart.ensure_source("other", 50)
    cart.add_gaussian_rows("other", np.arange(5), sigma=3.0)
    return cart


def _plan(**overrides: Any) -> dict[str, Any]:
    plan = {
        "n_rows_train": 900,
        "train_rows": TRAIN,
        "val_rows": VAL,
        "batch_size": 64,
        "epochs": 3,
        "delta": DELTA,
    }
    plan.update(overrides)
    return plan


def _run_fit(cart: Cart, *, sigma: float, val_sigma: float | None = None, **plan: Any) -> None:
    """What the server does for a fit: the quote must predict exactly this."""
    n_train, batch, epochs = plan["n_rows_train"], plan["batch_size"], plan["epochs"]
    cart.ensure_source("d", N)
    cart.mark_pool("d", plan["train_rows"])
    cart.add_sampled("d", q=batch / n_train, sigma=sigma, steps=epochs * math.ceil(n_train / batch))
    if plan["val_rows"] is not None:
        cart.add_gaussian_rows("d", plan["val_rows"], sigma=val_sigma or sigma, count=2 * epochs)


@pytest.mark.parametrize("val_rows", [VAL, np.r_[TRAIN[:5], VAL[:5]]], ids=["apart", "overlap"])
@pytest.mark.parametrize("start", [_used_cart, Cart], ids=["used", "new"])
def test_quote_predicts_the_fit_and_leaves_the_cart_alone(start: Any, val_rows: Any) -> None:
    cart = start()
    state, arrays = cart.state_dict(), cart.arrays()
    arrays = {k: {n: a.copy() for n, a in v.items()} for k, v in arrays.items()}
    quote = quote_fit(cart, "d", sigma=1.3, val_sigma=0.7, **_plan(val_rows=val_rows))
    assert cart.state_dict() == state
    for key, named in cart.arrays().items():
        for name, array in named.items():
            np.testing.assert_array_equal(array, arrays[key][name])
    assert quote.steps == 3 * math.ceil(900 / 64) and quote.q == 64 / 900 and quote.sigma == 1.3
    before = cart.epsilon(DELTA)
    _run_fit(cart, sigma=1.3, val_sigma=0.7, **_plan(val_rows=val_rows))
    assert quote.epsilon_after == pytest.approx(cart.epsilon(DELTA), rel=1e-12)
    assert quote.epsilon_added == pytest.approx(cart.epsilon(DELTA) - before, rel=1e-9)


def test_quote_without_validation_rows_charges_only_the_fit() -> None:
    quote = quote_fit(Cart(), "d", sigma=1.0, **_plan(val_rows=None))
    assert quote.epsilon_added == poisson_gaussian(quote.q, 1.0, quote.steps).epsilon(DELTA)


def test_validation_rows_cost_per_row_not_on_top_of_training() -> None:
    # The val rows are disjoint from the pool: a cheap validation release costs nothing
    # extra while the training rows are the worst ones.
    plain = quote_fit(Cart(), "d", sigma=1.0, **_plan(val_rows=None))
    cheap_val = quote_fit(Cart(), "d", sigma=1.0, val_sigma=50.0, **_plan())
    assert cheap_val.epsilon_added == plain.epsilon_added
    # A validation row in the pool pays both.
    overlap = quote_fit(Cart(), "d", sigma=1.0, val_sigma=50.0, **_plan(val_rows=TRAIN[:10]))
    assert overlap.epsilon_added > plain.epsilon_added


def test_a_second_fit_is_quoted_as_an_increment() -> None:
    cart = Cart()
    first = quote_fit(cart, "d", sigma=2.0, **_plan(val_rows=None))
    _run_fit(cart, sigma=2.0, **_plan(val_rows=None))
    second = quote_fit(cart, "d", sigma=2.0, **_plan(val_rows=None))
    assert second.epsilon_after > first.epsilon_after
    assert second.epsilon_added == pytest.approx(second.epsilon_after - first.epsilon_after)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"batch_size": 901}, "batch_size <= n_rows_train=900"),
        ({"n_rows_train": 899}, "n_rows_train=899"),
        ({"epochs": 0}, "epochs=0"),
        ({"train_rows": np.r_[TRAIN[:-1], 0]}, "each row once"),
        ({"val_rows": np.array([N])}, r"\[0, 1000\)"),
        ({"delta": 0.0}, "delta=0.0"),
    ],
)
def test_quote_arguments_are_validated(overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        quote_fit(_used_cart(), "d", sigma=1.0, **_plan(**overrides))


def test_calibrate_sigma_finds_the_smallest_sigma_meeting_the_target() -> None:
    calls = []

    def quote(sigma: float) -> float:
        calls.append(sigma)
        return 10.0 / sigma

    sigma = calibrate_sigma(2.0, quote)
    assert quote(sigma) <= 2.0
    assert quote(sigma / (1 + 2e-3)) > 2.0
    assert len(calls) < 25


def test_calibrate_sigma_ends_of_the_range() -> None:
    assert calibrate_sigma(100.0, lambda s: 1.0 / s) == SIGMA_MIN
    with pytest.raises(ValidationError, match="target_epsilon=0.001") as info:
        calibrate_sigma(1e-3, lambda s: 2.0 / s)
    assert info.value.detail["best_epsilon"] == 2.0 / SIGMA_MAX
    with pytest.raises(ValidationError):
        calibrate_sigma(-1.0, lambda s: 1.0)


def test_calibrate_fit_meets_the_target_with_the_least_noise() -> None:
    cart = _used_cart()
    quote = calibrate_fit(cart, "d", target_epsilon=1.0, **_plan())
    assert quote.epsilon_added <= 1.0
    less_noise = quote_fit(cart, "d", sigma=quote.sigma / (1 + 2e-3), **_plan())
    assert less_noise.epsilon_added > 1.0


def test_calibrate_fit_prices_validation_rows_that_cost_something_already() -> None:
    """Held-out rows pooled by an earlier fit: its validation releases add to their own
    cost, so a target calibrated without them is missed; with them, it holds."""
    from veil.privacy import dominated_gaussian_sigma, poisson_gaussian

    cart = Cart()
    cart.ensure_source("d", N)
    cart.mark_pool("d", np.arange(N))  # every row, the held-out ones too
    cart.add_sampled("d", q=0.1, sigma=1.0, steps=30)
    plan = _plan(epochs=1)
    steps = math.ceil(900 / 64)

    def val_sigma_of(sigma: float) -> float:
        return dominated_gaussian_sigma(poisson_gaussian(64 / 900, sigma, steps), count=2)

    blind = calibrate_fit(cart, "d", target_epsilon=0.5, **_plan(epochs=1, val_rows=None))
    missed = quote_fit(cart, "d", sigma=blind.sigma, val_sigma=val_sigma_of(blind.sigma), **plan)
    assert missed.epsilon_added > 0.5  # what fits.plan_fit once ran
    quote = calibrate_fit(cart, "d", target_epsilon=0.5, val_sigma_of=val_sigma_of, **plan)
    assert quote.epsilon_added <= 0.5
    run = quote_fit(cart, "d", sigma=quote.sigma, val_sigma=val_sigma_of(quote.sigma), **plan)
    assert run.epsilon_added == pytest.approx(quote.epsilon_added)


def test_dominated_gaussian_sigma_stays_under_the_curve_at_every_order() -> None:
    from veil.privacy import dominated_gaussian_sigma, gaussian, poisson_gaussian

    train = poisson_gaussian(0.1, 1.0, 50)
    sigma = dominated_gaussian_sigma(train, count=20)
    assert np.all(gaussian(sigma, count=20).values <= train.values)
    slightly_less = gaussian(sigma * 0.99, count=20).values
    assert np.any(slightly_less > train.values)  # the smallest such sigma


def test_a_base_curve_makes_quotes_say_what_a_fit_adds_to_a_ledger() -> None:
    cart = Cart()
    cart.ensure_source("d", 1000)
    base = poisson_gaussian(0.05, 1.0, 2000)  # what else the user has spent
    plan = _plan(val_rows=None)
    alone = quote_fit(cart, "d", sigma=1.5, **plan)
    on_ledger = quote_fit(cart, "d", sigma=1.5, base=base, **plan)
    fit = poisson_gaussian(alone.q, 1.5, alone.steps)
    assert alone.epsilon_added == pytest.approx(fit.epsilon(DELTA))
    expected_after = (RdpCurve.zero() + base + fit).epsilon(DELTA)
    assert on_ledger.epsilon_after == pytest.approx(expected_after)
    assert on_ledger.epsilon_added == pytest.approx(expected_after - base.epsilon(DELTA))
    assert on_ledger.epsilon_added < alone.epsilon_added  # RDP composes sub-additively here
    calibrated = calibrate_fit(cart, "d", target_epsilon=1.0, base=base, **plan)
    assert calibrated.epsilon_added <= 1.0 and calibrated.sigma < alone.sigma * 10
