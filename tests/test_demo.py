"""The demo datasets: deterministic disjoint splits, a learnable signal, idempotent loading."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

import veil.demo
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login
from veil.server.demo import ensure_demo_datasets

SHAPES = {
    "BreastCancerDataset": ((3, 50, 50), np.uint8),
    "BreastCancerWisconsin": ((30,), np.float32),
    "Digits": ((1, 8, 8), np.uint8),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_splits_are_deterministic_and_disjoint(name) -> None:
    spec = veil.demo.demo_dataset(name)
    test_x, test_y = veil.demo.public_test_split(name)
    train = veil.demo.private_train_split(name)
    train_x, train_y = train[spec.x_asset], train[spec.y_asset]
    trailing, dtype = SHAPES[name]
    assert test_x.shape[1:] == trailing == train_x.shape[1:] and test_x.dtype == dtype
    assert test_y.dtype == train_y.dtype == np.int64 and len(test_x) == len(test_y)
    assert 0.15 < len(test_y) / (len(test_y) + len(train_y)) < 0.25
    again_x, again_y = veil.demo.public_test_split(name)
    np.testing.assert_array_equal(again_x, test_x)
    np.testing.assert_array_equal(again_y, test_y)
    if name != "Digits":  # the real digits hold a few duplicate images
        seen = {row.tobytes() for row in train_x}
        assert not any(row.tobytes() in seen for row in test_x)
    test_x += 1  # callers get copies: the next call is untouched
    np.testing.assert_array_equal(veil.demo.public_test_split(name)[0], again_x)


def test_idc_patches_have_a_learnable_signal() -> None:
    train = veil.demo.private_train_split("BreastCancerDataset")
    test_x, test_y = veil.demo.public_test_split("BreastCancerDataset")
    assert set(np.unique(test_y)) == {0, 1}
    # IDC patches are darker (crowded nuclei): a mean-intensity threshold learnt on the
    # train split beats always guessing the majority class clearly.
    train_mean = train["train_images"].reshape(len(train["train_images"]), -1).mean(axis=1)
    candidates = np.percentile(train_mean, np.arange(5, 96))
    accuracy = [((train_mean < c) == train["train_labels"]).mean() for c in candidates]
    cut = candidates[int(np.argmax(accuracy))]
    test_mean = test_x.reshape(len(test_x), -1).mean(axis=1)
    chance = max(test_y.mean(), 1 - test_y.mean())
    assert ((test_mean < cut) == test_y).mean() > chance + 0.15


@pytest.mark.parametrize("name", ["BreastCancerWisconsin", "Digits"])
def test_real_data_is_learnable(name) -> None:
    spec = veil.demo.demo_dataset(name)
    train = veil.demo.private_train_split(name)
    test_x, test_y = veil.demo.public_test_split(name)
    x = train[spec.x_asset].reshape(len(train[spec.x_asset]), -1).astype(np.float64)
    scale = x.std(axis=0) + 1e-6
    model = KNeighborsClassifier(3).fit(x / scale, train[spec.y_asset])
    assert model.score(test_x.reshape(len(test_x), -1) / scale, test_y) > 0.9


def test_unknown_demo_dataset() -> None:
    with pytest.raises(KeyError, match="Digits"):
        veil.demo.public_test_split("MNIST")


def test_ensure_demo_datasets_is_idempotent(sqlite_node) -> None:
    assert ensure_demo_datasets(sqlite_node.ctx) == list(SHAPES)
    assert ensure_demo_datasets(sqlite_node.ctx) == []
    client = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert client.datasets.names() == list(SHAPES)
    idc = client.datasets["BreastCancerDataset"]
    assert idc.description == veil.demo.IDC_DESCRIPTION
    assert idc.keys() == ["train_images", "train_labels", "patient_id"]
    train = veil.demo.private_train_split("BreastCancerDataset")
    patients = len(np.unique(train["patient_id"]))
    assert (idc.unit, idc.subjects, idc.subject_asset) == ("subject", patients, "patient_id")
    assert f"subject ({patients} in patient_id)" in repr(client.datasets)
    assert client.datasets["Digits"].unit == "row"
    assert client.datasets["Digits"].subjects == len(
        veil.demo.private_train_split("Digits")["labels"]
    )
    assert idc["train_images"].public_shape == train["train_images"].shape
    np.testing.assert_array_equal(idc["train_labels"].get(), train["train_labels"])
    labels_mock = client.datasets["Digits"]["labels"].mock
    assert labels_mock.min() >= 0 and labels_mock.max() <= 9
    assert client.datasets["BreastCancerWisconsin"].keys() == ["features", "labels"]


def test_idc_patients_own_many_patches_and_the_split_keeps_them_whole() -> None:
    assets, train, test = veil.demo._split("BreastCancerDataset")
    ids = assets["patient_id"]
    assert not set(ids[train]) & set(ids[test])  # no patient on both sides
    _, patches = np.unique(ids, return_counts=True)
    assert len(patches) == 200 and patches.min() >= 6 and patches.max() <= 18
