"""Datasets over real HTTP: upload, listing, indexing, mocks, deletion, permissions."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest

import veil
from tests.conftest import make_ds
from tests.nodes import RunningNode

IDC = (
    "Invasive Ductal Carcinoma (IDC) is the most common subtype of all breast cancers. "
    "The modified dataset consisted of 162 whole mount slide images of Breast Cancer (BCa) "
    "specimens scanned at 40x. Patches of size 50 x 50 were extracted from the original "
    "image. The labels 0 is non-IDC and 1 is IDC."
)


def files_under(node: RunningNode) -> list[Path]:
    return sorted(p for p in node.settings.arrays_dir.rglob("*") if p.is_file())


def raw_http(node: RunningNode, client: veil.Client) -> httpx.Client:
    """Plain HTTP with the client's token, to speak the upload protocol by hand."""
    headers = {"Authorization": f"Bearer {client._http.token}"}
    return httpx.Client(base_url=node.url + "/api/v1", headers=headers, timeout=30)


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def upload_patches(admin: veil.Client, name: str = "BreastCancerDataset", n: int = 12) -> tuple:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 3, 5, 5), dtype=np.uint8)
    labels = rng.integers(0, 2, size=n).astype(np.int64)
    dataset = admin.datasets.upload(
        name=name,
        description=IDC,
        assets={"train_images": images, "train_labels": labels},
        bounds={"train_labels": (0, 1)},
    )
    return dataset, images, labels


def test_upload_list_and_index(node, admin, ds) -> None:
    first, images, labels = upload_patches(admin)
    second, _, _ = upload_patches(admin, name="BreastCancerDataset2")
    assert first.keys() == ["train_images", "train_labels"]
    view = ds.datasets  # a data scientist sees every dataset's public metadata
    assert len(view) == 2 and [d.name for d in view] == [
        "BreastCancerDataset",
        "BreastCancerDataset2",
    ]
    text = repr(view)
    assert text.splitlines()[0].split() == [
        "Idx",
        "Name",
        "Description",
        "Assets",
        "Privacy",
        "unit",
        "Id",
    ]
    assert '["train_images"] -> ["train_labels"] ->' in text
    assert "[0]" in text and "[1]" in text and first.id in text and second.id in text
    html = view._repr_html_()
    assert "<table>" in html and IDC in html and "&quot;train_images&quot;" in html
    assert view[1].id == second.id and view[-1].id == second.id
    assert view["BreastCancerDataset"].id == first.id and view[first.id].name == first.name
    assert view[0].description == IDC
    pointer = view[1]["train_images"]
    assert isinstance(pointer, veil.AssetPointer)
    assert pointer.public_shape == images.shape and pointer.dtype == np.uint8
    np.testing.assert_array_equal(admin.datasets[0]["train_labels"].get(), labels)
    assert "train_images" in repr(view[0])


def test_upload_from_npy_paths(node, admin, tmp_path) -> None:
    features = np.linspace(-1, 1, 40, dtype=np.float32).reshape(10, 4)
    labels = np.arange(10, dtype=np.int64) % 3
    np.save(tmp_path / "features.npy", features)
    np.save(tmp_path / "labels.npy", labels)
    dataset = admin.datasets.upload(
        name="FromFiles",
        assets={"features": str(tmp_path / "features.npy"), "labels": tmp_path / "labels.npy"},
        bounds={"features": (-1, 1), "labels": (0, 2)},
    )
    np.testing.assert_array_equal(dataset["features"].get(), features)
    np.testing.assert_array_equal(dataset["labels"].get(), labels)
    (tmp_path / "not.npy").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(veil.ValidationError, match="not a .npy"):
        admin.datasets.upload(name="Pickle", assets={"x": tmp_path / "not.npy"})
    np.save(tmp_path / "fortran.npy", np.asfortranarray(features))
    with pytest.raises(veil.ValidationError, match="C-order"):
        admin.datasets.upload(name="Fortran", assets={"x": tmp_path / "fortran.npy"})


def test_unknown_names_raise_key_errors_that_list_what_exists(node, admin, ds) -> None:
    upload_patches(admin)
    with pytest.raises(KeyError) as err:
        ds.datasets["NoSuchDataset"]
    assert isinstance(err.value, veil.NotFound)
    assert "NoSuchDataset" in str(err.value) and "BreastCancerDataset" in str(err.value)
    with pytest.raises(veil.NotFound) as err:
        ds.datasets[0]["test_images"]
    assert "train_images" in str(err.value) and "train_labels" in str(err.value)
    with pytest.raises(IndexError, match="1 datasets"):
        ds.datasets[3]


def test_dataset_names_are_unique(node, admin) -> None:
    upload_patches(admin)
    with pytest.raises(veil.Conflict, match="exists already"):
        upload_patches(admin)
    assert len(admin.datasets) == 1
    assert not list(node.settings.arrays_dir.joinpath("staging").iterdir())


def test_mocks_come_from_the_owner_or_from_bounds_only(node, admin, ds) -> None:
    private = np.full((150, 4), 0.5, dtype=np.float32)
    private[7, 2] = 12345.678  # a distinctive private value
    other = np.random.default_rng(1).random((150, 4)).astype(np.float32)
    given = np.arange(12, dtype=np.int64).reshape(3, 4)
    admin.datasets.upload(
        name="A",
        assets={"x": private, "codes": np.zeros((150, 4), np.int64)},
        bounds={"x": (0, 20000)},
        mock={"codes": given},
    )
    admin.datasets.upload(name="B", assets={"x": other}, bounds={"x": (0, 20000)})
    x_a, x_b = ds.datasets["A"]["x"], ds.datasets["B"]["x"]
    assert x_a.mock.shape == (100, 4) and x_a.mock.dtype == np.float32
    assert x_a.mock.min() >= 0 and x_a.mock.max() <= 20000
    assert not np.isin(np.float32(12345.678), x_a.mock)
    # Made from shape, dtype and bounds only: the same whatever the private values.
    np.testing.assert_array_equal(x_a.mock, x_b.mock)
    np.testing.assert_array_equal(ds.datasets["A"]["codes"].mock, given)
    assert ds.datasets["A"]["codes"].mock_source == "owner"


def test_mock_defaults_and_refusals(node, admin) -> None:
    images = np.zeros((5, 2, 2), np.uint8)
    flags = np.zeros(5, bool)
    dataset = admin.datasets.upload(name="Defaults", assets={"images": images, "flags": flags})
    mock = dataset["images"].mock
    assert mock.dtype == np.uint8 and mock.shape == (5, 2, 2) and mock.max() > 0
    assert dataset["flags"].mock.dtype == bool
    with pytest.raises(veil.ValidationError, match=r"'labels' \(int64\) needs bounds"):
        admin.datasets.upload(name="NoBounds", assets={"labels": np.zeros(5, np.int64)})
    with pytest.raises(veil.ValidationError, match="trailing shape"):
        admin.datasets.upload(
            name="BadMock", assets={"x": images}, mock={"x": np.zeros((2, 3, 3), np.uint8)}
        )
    with pytest.raises(veil.ValidationError, match="at most 5 rows"):
        admin.datasets.upload(
            name="BigMock", assets={"x": images}, mock={"x": np.zeros((6, 2, 2), np.uint8)}
        )
    with pytest.raises(veil.ValidationError, match="bounds"):
        admin.datasets.upload(name="BadBounds", assets={"x": images}, bounds={"x": (0, 300)})
    with pytest.raises(veil.ValidationError, match="object"):
        admin.datasets.upload(name="Objects", assets={"x": np.array([{}, None], dtype=object)})
    assert admin.datasets.names() == ["Defaults"]


def test_data_scientist_cannot_upload_or_delete(node, admin, ds) -> None:
    upload_patches(admin)
    with pytest.raises(veil.PermissionDenied):
        ds.datasets.upload(name="Mine", assets={"x": np.zeros(3, np.uint8)})
    with pytest.raises(veil.PermissionDenied):
        ds.datasets.delete("BreastCancerDataset")
    with raw_http(node, ds) as http:
        answer = http.post(
            "/datasets/uploads",
            json={"name": "Mine", "assets": [{"name": "x", "dtype": "|u1", "shape": [3]}]},
        )
        assert answer.status_code == 403
    assert admin.datasets.names() == ["BreastCancerDataset"]


def test_delete_removes_rows_views_and_files(node, admin) -> None:
    dataset, _, _ = upload_patches(admin)
    view = dataset["train_images"][2:5]
    ds = make_ds(admin, node)
    ds_view = ds.datasets[0]["train_labels"][0:3]
    assert len(files_under(node)) == 4  # two arrays, two mocks
    admin.datasets.delete("BreastCancerDataset")
    assert len(admin.datasets) == 0 and files_under(node) == []
    for pointer in (view, ds_view, dataset["train_images"]):
        with pytest.raises(veil.NotFound):
            _ = pointer[0:1].id  # slicing is local; naming the rows asks the node
    with pytest.raises(veil.NotFound, match="Datasets: \\[\\]"):
        admin.datasets.delete("BreastCancerDataset")
