"""Asset pointers through the client: metadata, slicing on the node, mocks, `.get()`."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

import veil
from tests.conftest import make_ds
from tests.server.test_datasets import raw_http
from veil import nn
from veil.server.db.tables.accounts import UserRow
from veil.server.db.tables.datasets import AssetViewRow
from veil.server.services.datasets import resolve_pointer

N = 30


@pytest.fixture
def data(admin) -> np.ndarray:
    """A private array whose row i holds i, so every slice is easy to check."""
    values = np.repeat(np.arange(N, dtype=np.float32), 6).reshape(N, 2, 3)
    owner_mock = values[:12] * 0 - 1  # 12 mock rows, all -1
    admin.datasets.upload(
        name="Rows",
        description="row i holds i",
        assets={"x": values, "y": np.arange(N, dtype=np.int64)},
        mock={"x": owner_mock},
        bounds={"y": (0, N - 1)},
    )
    return values


def test_pointer_metadata(data, ds) -> None:
    dataset = ds.datasets["Rows"]
    x = dataset["x"]
    assert x.public_shape == (N, 2, 3) and len(x) == N and x.dtype == np.float32
    assert x.name == "x" and x.dataset_id == dataset.id and x.id == x.asset_id
    assert not x.is_view and "x" in repr(x) and "(30, 2, 3)" in repr(x)
    np.testing.assert_array_equal(x.mock, np.full((12, 2, 3), -1, np.float32))
    y = dataset["y"]
    assert y.mock.shape == (N,) and y.mock.dtype == np.int64 and y.bounds == (0, N - 1)
    assert y.mock.min() >= 0 and y.mock.max() <= N - 1
    for pointer in (x, x[0:2]):
        with pytest.raises(veil.PermissionDenied, match=r"only through publish\(\)"):
            pointer.get()


SLICES = [
    slice(2, 10),
    slice(2, 10, 3),
    slice(-5, None),
    slice(None, -3),
    slice(-100, 3),
    slice(25, 100),
    slice(None, None, 7),
    slice(np.int64(1), np.int32(4)),
]


def test_slices_follow_python(data, admin) -> None:
    x = admin.datasets["Rows"]["x"]
    for key in SLICES:
        view = x[key]
        expected = data[key]
        assert view.is_view and view.id != x.id and view.asset_id == x.id, key
        assert view.public_shape == expected.shape and len(view) == len(expected), key
        np.testing.assert_array_equal(view.get(), expected)
        # The mock is sliced alike, as far as its 12 rows go.
        mock_rows = [i for i in range(N)[key] if i < 12]
        np.testing.assert_array_equal(view.mock, np.full((len(mock_rows), 2, 3), -1, np.float32))


def test_slice_of_a_slice_composes_and_bad_keys_are_refused(data, ds, admin) -> None:
    x = ds.datasets["Rows"]["x"]
    inner = x[3:28:2][1:-1:3]
    assert inner.public_shape == data[3:28:2][1:-1:3].shape
    assert list(inner.rows) == list(range(N)[3:28:2][1:-1:3])
    again = x[3:28:2][1:-1:3]
    assert again.id == inner.id  # the same rows by the same user: the same view
    np.testing.assert_array_equal(admin.datasets["Rows"]["x"][5:27:6].get(), data[5:27:6])
    for key in BAD_KEYS:
        with pytest.raises(veil.ValidationError):
            x[key]


BAD_KEYS = [
    3,
    -1,
    "a",
    (slice(0, 2), 0),
    slice(0, 4, 0),
    slice(4, 0, -1),
    slice(1.5, 3),
    slice(True, 3),
    Ellipsis,
]


def test_rows_a_pointer_lacks_are_out_of_range_and_say_how_many_it_has(data, ds) -> None:
    x = ds.datasets["Rows"]["x"]
    for key, text in [
        (slice(1000, 2000), r"Slice \[1000:2000\] selects no rows of 'x', which has 30 rows"),
        (slice(10, 5), r"Slice \[10:5\] selects no rows of 'x'"),
        (slice(30, None, 2), r"Slice \[30::2\] selects no rows of 'x'"),
        (30, r"Row 30 is out of range: x has 30 rows"),
        (-31, r"Row -31 is out of range"),
    ]:
        with pytest.raises(veil.OutOfRange, match=text) as caught:
            x[key]
        assert isinstance(caught.value, IndexError) and isinstance(
            caught.value, veil.ValidationError
        )
    with pytest.raises(veil.OutOfRange, match="a view of 'x', which has 5 rows"):
        x[0:5][5:9]
    with pytest.raises(veil.ValidationError, match=r"use ptr\[3:4\] for that row") as caught:
        x[3]
    assert not isinstance(caught.value, IndexError)
    assert x[29:].public_shape == (1, 2, 3) and x[-1:].public_shape == (1, 2, 3)


def test_views_belong_to_their_maker(data, admin, ds, node) -> None:
    view = ds.datasets["Rows"]["x"][0:5]
    other = make_ds(admin, node)
    with raw_http(node, other) as http:
        for path in (f"/assets/{view.id}", f"/assets/{view.id}/mock"):
            answer = http.get(path)
            assert answer.status_code == 404 and answer.json()["error"] == "NotFound"
        assert http.post(f"/assets/{view.id}/slice", json={"start": 1}).status_code == 404
    with node.ctx.db.session() as session:
        stranger = session.get(UserRow, other.user.id)
        with pytest.raises(veil.NotFound):
            resolve_pointer(session, node.ctx.arrays, user=stranger, pointer_id=view.id)
    with raw_http(node, admin) as http:  # the admin sees every view
        assert http.get(f"/assets/{view.id}").json()["shape"] == [5, 2, 3]


def test_resolve_pointer_contract(data, ds, node) -> None:
    x = ds.datasets["Rows"]["x"]
    view = x[4:20:5]
    view_id = view.id  # stored on the node now, before this session's snapshot
    with node.ctx.db.session() as session:
        user = session.get(UserRow, ds.user.id)
        whole = resolve_pointer(session, node.ctx.arrays, user=user, pointer_id=x.id)
        part = resolve_pointer(session, node.ctx.arrays, user=user, pointer_id=view_id)
        with pytest.raises(veil.NotFound):
            resolve_pointer(session, node.ctx.arrays, user=user, pointer_id="nope")
    assert isinstance(whole.array, np.memmap) and not whole.array.flags.writeable
    assert whole.dataset_id == x.dataset_id and whole.asset_id == x.id and whole.asset_name == "x"
    np.testing.assert_array_equal(whole.rows, np.arange(N))
    assert whole.n_asset_rows == N and whole.shape == (N, 2, 3) and whole.dtype == "float32"
    assert part.rows.dtype == np.int64 and part.rows.tolist() == [4, 9, 14, 19]
    assert part.asset_id == x.id and part.shape == (4, 2, 3) and part.n_asset_rows == N
    np.testing.assert_array_equal(part.array[part.rows], data[4:20:5])


def _views(node) -> int:
    with node.ctx.db.session() as session:
        return session.scalar(select(func.count()).select_from(AssetViewRow))


def _model(ds: veil.Client) -> veil.ModelPointer:
    model = nn.Model()
    model.add(nn.Flatten(input_shape=(None, 2, 3)))
    model.add(nn.Dense(1))
    return model.compile(to=ds, loss=nn.MeanSquaredError(), optimizer=nn.SGD())


def test_a_step_names_its_rows_and_a_slice_is_stored_only_when_its_id_is_asked(
    data, ds, node
) -> None:
    x, y = ds.datasets["Rows"]["x"], ds.datasets["Rows"]["y"]
    model_ptr = _model(ds)
    before = _views(node)
    batch_x, batch_y = x[3:28:2][1:-1:3], y[3:28:2][1:-1:3]
    assert list(batch_x.rows) == list(range(N)[3:28:2][1:-1:3]) and "first use" in repr(batch_x)
    loss, preds = model_ptr.step(batch_x, batch_y)
    model_ptr.evaluate(x[0:10], y[0:10], epsilon=1.0)
    assert _views(node) == before  # no slice request, no view stored
    assert tuple(preds.shape) == (len(batch_x), 1)
    assert batch_x.id == x[3:28:2][1:-1:3].id != x.id and _views(node) == before + 1
    model_ptr.step(batch_x, batch_y)  # a stored view still works, by its id
    model_ptr.step(x[0:4].id and x[0:4], y[0:4])  # one side stored, the other named
    with pytest.raises(veil.OutOfRange, match="a view of 'x', which has 5 rows"):
        x[0:5][5:9]


def test_named_rows_are_checked_as_a_slice_is(data, ds, admin, node) -> None:
    x, y = ds.datasets["Rows"]["x"], ds.datasets["Rows"]["y"]
    model_ptr = _model(ds)
    other = make_ds(admin, node)
    strangers = other.datasets["Rows"]["x"][0:5]
    url = f"/models/{model_ptr.id}/step"
    with raw_http(node, ds) as http:

        def step(**body: object) -> httpx.Response:
            return http.post(url, json={"x": x.id, "y": y.id, **body})

        answer = step(x_rows={"start": 30}, y_rows={"start": 30})
        assert answer.status_code == 422 and answer.json()["error"] == "OutOfRange"
        assert "Slice [30:] selects no rows of 'x', which has 30 rows" in answer.json()["message"]
        for bad in ({"step": 0}, {"step": -1}, {"start": "1"}, {"start": 1.5}, {"rows": 3}):
            assert step(x_rows=bad, y_rows=bad).status_code == 422, bad
        answer = step(x=strangers.id, x_rows={"start": 0}, y_rows={"stop": 5})
        assert answer.status_code == 404 and answer.json()["error"] == "NotFound"
        answer = step(x_rows={"start": 0, "stop": 4}, y_rows={"start": 1, "stop": 5})
        assert answer.status_code == 422 and "same rows" in answer.json()["message"]
        assert step(x_rows={"stop": 4}, y_rows={"stop": 4}).status_code == 200
        evaluated = http.post(
            f"/models/{model_ptr.id}/evaluate",
            json={"x": x.id, "y": y.id, "x_rows": {"start": 99}, "epsilon": 1.0},
        )
        assert evaluated.status_code == 422 and evaluated.json()["error"] == "OutOfRange"
