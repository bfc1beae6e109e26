import io
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil import ValidationError
from veil.privacy import ORDERS, Cart, RdpCurve, gaussian, gaussian_rho, poisson_gaussian

ALPHA = np.array(ORDERS)
N_ROWS = {"a": 12, "b": 7}
SIGMAS = st.sampled_from([0.5, 1.0, 2.0, 3.0])


def _new_cart() -> Cart:
    cart = Cart()
    for key, n in N_ROWS.items():
        cart.ensure_source(key, n)
    return cart


@st.composite
def _op(draw: st.DrawFn, keys: tuple[str, ...] = ("a", "b")) -> tuple[Any, ...]:
    key = draw(st.sampled_from(keys))
    rows = st.integers(0, N_ROWS[key] - 1)
    if draw(st.booleans()):
        pool = draw(st.lists(rows, min_size=1, max_size=N_ROWS[key], unique=True))
        q = draw(st.sampled_from([0.01, 0.1, 0.5]))
        return ("fit", key, pool, q, draw(SIGMAS), draw(st.integers(1, 500)))
    batch = draw(st.lists(rows, max_size=8))
    return ("step", key, batch, draw(SIGMAS), draw(st.integers(0, 3)))


def _apply(cart: Cart, ops: list[tuple[Any, ...]]) -> Cart:
    for op in ops:
        if op[0] == "fit":
            _, key, pool, q, sigma, steps = op
            cart.mark_pool(key, np.array(pool))
            cart.add_sampled(key, q=q, sigma=sigma, steps=steps)
        else:
            _, key, batch, sigma, count = op
            cart.add_gaussian_rows(key, np.array(batch, dtype=np.int64), sigma=sigma, count=count)
    return cart


def _per_row_costs(ops: list[tuple[Any, ...]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per key and row, by brute force: the cart's bound and the row's own exact cost."""
    out = {}
    for key, n in N_ROWS.items():
        rho = np.zeros(n)
        own = np.zeros((n, len(ORDERS)))  # each row pays only the fits it was pooled in
        in_pool = np.zeros(n, dtype=bool)
        sampled = np.zeros(len(ORDERS))
        for op in ops:
            if op[1] != key:
                continue
            if op[0] == "fit":
                _, _, pool, q, sigma, steps = op
                curve = poisson_gaussian(q, sigma, steps).values
                sampled = sampled + curve
                in_pool[pool] = True
                own[pool] += curve
            else:
                _, _, batch, sigma, count = op
                for row in set(batch):
                    rho[row] += count * batch.count(row) ** 2 * gaussian_rho(sigma)
        bound = np.where(in_pool[:, None], sampled, 0.0) + np.outer(rho, ALPHA)
        out[key] = (bound, own + np.outer(rho, ALPHA))
    return out


OPS = st.lists(_op(), max_size=12)


@given(OPS)
@settings(max_examples=40, deadline=None)
def test_curve_is_the_worst_row_per_source_summed_over_sources(ops: list[tuple[Any, ...]]) -> None:
    cart = _apply(_new_cart(), ops)
    rows = _per_row_costs(ops)
    expected = sum(bound.max(axis=0) for bound, _ in rows.values())
    np.testing.assert_allclose(cart.curve().values, expected, rtol=1e-12, atol=1e-300)
    # Sound: no row's own cost exceeds what the cart charges.
    truth = sum(own.max(axis=0) for _, own in rows.values())
    assert np.all(truth <= cart.curve().values * (1 + 1e-12))


@given(OPS, OPS)
@settings(max_examples=40, deadline=None)
def test_merge_is_the_cart_of_both_sets_of_operations(
    first: list[tuple[Any, ...]], second: list[tuple[Any, ...]]
) -> None:
    a, b = _apply(_new_cart(), first), _apply(_new_cart(), second)
    before = a.state_dict()
    merged = a.merge(b)
    both = _apply(_new_cart(), first + second)
    np.testing.assert_allclose(merged.curve().values, both.curve().values, rtol=1e-12)
    assert a.state_dict() == before  # merge builds a new cart


@given(st.lists(_op(("a",)), max_size=8), st.lists(_op(("b",)), max_size=8))
@settings(max_examples=30, deadline=None)
def test_merge_of_disjoint_sources_is_exact(
    first: list[tuple[Any, ...]], second: list[tuple[Any, ...]]
) -> None:
    merged = _apply(_new_cart(), first).merge(_apply(_new_cart(), second))
    both = _apply(_new_cart(), first + second)
    assert merged.curve() == both.curve()
    assert merged.state_dict() == both.state_dict()


def test_merge_of_sampled_parts_adds_them() -> None:
    a, b = _new_cart(), _new_cart()
    a.add_sampled("a", q=0.01, sigma=1.0, steps=100)
    b.add_sampled("a", q=0.1, sigma=2.0, steps=30)
    expected = poisson_gaussian(0.01, 1.0, 100) + poisson_gaussian(0.1, 2.0, 30)
    assert a.merge(b).curve() == expected


def _round_trip(cart: Cart) -> Cart:
    """Through JSON and .npy bytes, the way the server stores a cart."""
    state = json.loads(json.dumps(cart.state_dict()))
    arrays = {}
    for key, named in cart.arrays().items():
        arrays[key] = {}
        for name, array in named.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            buffer.seek(0)
            arrays[key][name] = np.load(buffer)
    loaded = Cart()
    loaded.load_state_dict(state, arrays)
    return loaded


@given(OPS)
@settings(max_examples=40, deadline=None)
def test_state_round_trip_is_exact(ops: list[tuple[Any, ...]]) -> None:
    cart = _apply(_new_cart(), ops)
    loaded = _round_trip(cart)
    assert loaded.state_dict() == cart.state_dict()
    assert loaded.curve() == cart.curve()
    assert Cart.curve_from_state(json.loads(json.dumps(cart.state_dict()))) == cart.curve()
    for key, named in cart.arrays().items():
        for name, array in named.items():
            np.testing.assert_array_equal(loaded.arrays()[key][name], array)
    # A loaded cart keeps working like the original.
    for c in (cart, loaded):
        c.add_gaussian_rows("a", np.array([0, 1]), sigma=1.0)
    assert loaded.curve() == cart.curve()


def test_gaussian_costs_on_disjoint_rows_do_not_add() -> None:
    cart = _new_cart()
    cart.add_gaussian_rows("a", np.arange(0, 4), sigma=2.0)
    cart.add_gaussian_rows("a", np.arange(4, 8), sigma=2.0)
    np.testing.assert_allclose(cart.curve().values, gaussian(2.0).values, rtol=1e-15)


def test_gaussian_costs_on_the_same_row_add() -> None:
    cart = _new_cart()
    cart.add_gaussian_rows("a", np.arange(0, 4), sigma=2.0)
    cart.add_gaussian_rows("a", np.arange(3, 8), sigma=2.0)
    np.testing.assert_allclose(cart.curve().values, gaussian(2.0, 2).values, rtol=1e-15)


def test_a_row_twice_in_one_batch_counts_twice_in_the_sum() -> None:
    # Two copies of a row put two clipped terms in the noised sum: sensitivity 2,
    # so the Gaussian costs 2^2 = 4 times rho (twice as much as two separate steps).
    cart = _new_cart()
    cart.add_gaussian_rows("a", np.array([5, 5, 6]), sigma=2.0)
    assert cart.arrays()["a"]["rho"][5] == 4 * gaussian_rho(2.0)
    assert cart.arrays()["a"]["rho"][6] == gaussian_rho(2.0)
    np.testing.assert_allclose(cart.curve().values, gaussian(2.0, 4).values, rtol=1e-15)
    separate = _new_cart()
    separate.add_gaussian_rows("a", np.array([5]), sigma=2.0, count=2)
    assert separate.arrays()["a"]["rho"][5] == 2 * gaussian_rho(2.0)


def test_sources_add_up() -> None:
    cart = _new_cart()
    cart.add_gaussian_rows("a", np.array([0]), sigma=1.0)
    cart.add_gaussian_rows("b", np.array([0]), sigma=1.0)
    np.testing.assert_allclose(cart.curve().values, gaussian(1.0, 2).values, rtol=1e-15)


def test_pool_rows_pay_the_fit_and_their_own_gaussian_costs() -> None:
    cart = _new_cart()
    cart.mark_pool("a", np.arange(6))
    cart.add_sampled("a", q=0.1, sigma=1.0, steps=100)
    fit = poisson_gaussian(0.1, 1.0, 100)
    assert cart.curve() == fit
    cart.add_gaussian_rows("a", np.array([0]), sigma=4.0)  # in the pool: adds to the fit
    np.testing.assert_allclose(cart.curve().values, (fit + gaussian(4.0)).values, rtol=1e-15)
    cart.add_gaussian_rows("a", np.array([9]), sigma=0.5, count=40)  # outside: its own cost
    outside = gaussian(0.5, 40)
    expected = (fit + gaussian(4.0)).maximum(outside)
    np.testing.assert_allclose(cart.curve().values, expected.values, rtol=1e-15)


def test_a_row_once_in_the_pool_stays_there() -> None:
    cart = _new_cart()
    cart.mark_pool("a", np.array([0, 1]))
    cart.add_sampled("a", q=0.1, sigma=1.0, steps=10)
    cart.mark_pool("a", np.array([2, 3]))
    cart.add_gaussian_rows("a", np.array([0]), sigma=1.0)
    assert cart.arrays()["a"]["pool"][[0, 1, 2, 3]].all()
    expected = poisson_gaussian(0.1, 1.0, 10) + gaussian(1.0)
    np.testing.assert_allclose(cart.curve().values, expected.values, rtol=1e-15)


def test_publishing_twice_charges_once() -> None:
    cart = _new_cart()
    cart.mark_pool("a", np.arange(10))
    cart.add_sampled("a", q=0.05, sigma=1.1, steps=400)
    assert (cart.curve() - cart.curve()).is_zero
    charged = RdpCurve.zero()
    charged = charged + (cart.curve() - charged)
    assert (cart.curve() - charged).is_zero
    cart.add_sampled("a", q=0.05, sigma=1.1, steps=100)
    increment = cart.curve() - charged
    np.testing.assert_allclose(
        increment.values, poisson_gaussian(0.05, 1.1, 100).values, rtol=1e-12
    )


def test_copy_is_independent() -> None:
    cart = _new_cart()
    cart.add_gaussian_rows("a", np.array([1]), sigma=1.0)
    copy = cart.copy()
    copy.add_gaussian_rows("a", np.array([1]), sigma=1.0)
    copy.mark_pool("b", np.array([0]))
    assert cart.arrays()["a"]["rho"][1] == gaussian_rho(1.0)
    assert not cart.arrays()["b"]["pool"].any()


def test_arrays_are_read_only_views() -> None:
    cart = _new_cart()
    with pytest.raises(ValueError):
        cart.arrays()["a"]["rho"][0] = 1.0


def test_empty_cart_costs_nothing() -> None:
    assert Cart().curve().is_zero
    assert _new_cart().epsilon(1e-5) == 0.0


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda c: c.add_gaussian_rows("x", np.array([0]), sigma=1.0), "ensure_source"),
        (lambda c: c.add_gaussian_rows("a", np.array([-1]), sigma=1.0), "Received: indices"),
        (lambda c: c.add_gaussian_rows("a", np.array([12]), sigma=1.0), r"\[0, 12\)"),
        (lambda c: c.add_gaussian_rows("a", np.array([0.0]), sigma=1.0), "integer row"),
        (lambda c: c.add_gaussian_rows("a", np.array([0]), sigma=0.0), "sigma=0.0"),
        (lambda c: c.add_gaussian_rows("a", np.array([0]), sigma=1.0, count=-1), "count=-1"),
        (lambda c: c.mark_pool("a", np.array([1, 1])), "each row once"),
        (lambda c: c.ensure_source("a", 13), "has 12 rows"),
        (lambda c: c.add_sampled("a", q=2.0, sigma=1.0, steps=1), "q=2.0"),
    ],
)
def test_bad_calls_are_refused(call: Any, needle: str) -> None:
    cart = _new_cart()
    before = cart.state_dict()
    with pytest.raises(ValidationError, match=needle):
        call(cart)
    assert cart.state_dict() == before


def test_merge_refuses_sources_of_different_sizes() -> None:
    a, b = Cart(), Cart()
    a.ensure_source("a", 3)
    b.ensure_source("a", 4)
    with pytest.raises(ValidationError, match="3 rows"):
        a.merge(b)


def _stored() -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    cart = _new_cart()
    cart.mark_pool("a", np.array([0, 1]))
    cart.add_sampled("a", q=0.1, sigma=1.0, steps=5)
    cart.add_gaussian_rows("b", np.array([2]), sigma=1.0)
    state = json.loads(json.dumps(cart.state_dict()))
    arrays = {k: {n: np.array(a) for n, a in v.items()} for k, v in cart.arrays().items()}
    return state, arrays


def _break(what: str) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]], str]:
    state, arrays = _stored()
    if what == "missing":
        del state["sources"]["a"]["max_rho_out"]
        return state, arrays, r"Missing: \['max_rho_out'\]"
    if what == "unknown":
        state["sources"]["a"]["extra"] = 1
        return state, arrays, r"unknown: \['extra'\]"
    if what == "version":
        state["version"] = 2
        return state, arrays, "version 1"
    if what == "arrays":
        del arrays["b"]
        return state, arrays, r"Missing: \['b'\]"
    if what == "maxima":
        state["sources"]["b"]["max_rho_out"] = 0.25
        return state, arrays, "do not match"
    if what == "shape":
        arrays["a"]["rho"] = np.zeros(3)
        return state, arrays, r"shape \(12,\)"
    if what == "curve":
        state["sources"]["a"]["sampled"] = [0.0] * 5
        return state, arrays, f"expects {len(ORDERS)} values"
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what", ["missing", "unknown", "version", "arrays", "maxima", "shape", "curve"]
)
def test_load_state_dict_checks_everything_and_changes_nothing_on_failure(what: str) -> None:
    state, arrays, needle = _break(what)
    cart = _new_cart()
    cart.add_gaussian_rows("a", np.array([3]), sigma=1.0)
    before = cart.state_dict()
    with pytest.raises(ValidationError, match=needle):
        cart.load_state_dict(state, arrays)
    assert cart.state_dict() == before


def test_a_release_on_any_subject_charges_every_row_alike() -> None:
    cart = Cart()
    cart.ensure_source("people", 50)
    cart.mark_pool("people", np.arange(40))
    cart.add_sampled("people", q=0.1, sigma=1.0, steps=100)
    before = cart.curve()
    cart.add_gaussian_all("people", sigma=2.0, count=3)
    expected = before + gaussian(2.0, count=3)  # pool rows and the rest alike
    np.testing.assert_allclose(cart.curve().values, expected.values, rtol=1e-12)
    restored = Cart()
    restored.load_state_dict(cart.state_dict(), cart.arrays())
    assert restored.curve() == cart.curve()
