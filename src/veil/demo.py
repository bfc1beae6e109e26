"""The demo datasets: a private train split for the node, a public test split for you.

```python
import veil.demo
test_x, test_y = veil.demo.public_test_split("BreastCancerWisconsin")
```

- `BreastCancerDataset`: IDC-style histology patches (uint8, N x 3 x 50 x 50; labels 0 =
  non-IDC, 1 = IDC) from 200 patients, generated with a fixed seed: IDC patches are
  crowded with dark, purple-stained nuclei, non-IDC patches are mostly pink stroma, with
  overlap, so a model has something real but not trivial to learn. Each patient has
  6 to 18 patches, its own stain shade and its own share of IDC, and `patient_id` says
  whose each patch is: its privacy unit is the patient, not the patch.
- `BreastCancerWisconsin`: the Wisconsin Diagnostic data scikit-learn ships (30 float
  features; labels 0 = malignant, 1 = benign, as in scikit-learn).
- `Digits`: the 8 x 8 handwritten digits scikit-learn ships (uint8 N x 1 x 8 x 8 with
  values 0..16; labels 0..9).

Each is split once, with a fixed seed, into a private train part (the node's, via
`private_train_split`) and a disjoint public test part (by patient, where there are
patients). Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

__all__ = [
    "DEMO_DATASETS",
    "DemoDataset",
    "demo_dataset",
    "private_train_split",
    "public_test_split",
]

_SEED = 20240501
_TEST_FRACTION = 0.2

IDC_DESCRIPTION = (
    "Invasive Ductal Carcinoma (IDC) is the most common subtype of all breast cancers. "
    "The modified dataset consisted of 162 whole mount slide images of Breast Cancer (BCa) "
    "specimens scanned at 40x. Patches of size 50 x 50 were extracted from the original "
    "image. The labels 0 is non-IDC and 1 is IDC."
)


@dataclass(frozen=True)
class DemoDataset:
    """How one demo dataset is made and what the node is told about it (all public)."""

    name: str
    description: str
    x_asset: str
    y_asset: str
    make: Callable[[], dict[str, np.ndarray]]  # every asset, the x and y ones included
    bounds: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    subject: str | None = None  # the asset naming each row's data subject


def _idc_patches(patients: int = 200, side: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(_SEED)
    counts = rng.integers(6, 19, size=patients)
    patient = np.repeat(np.arange(patients), counts)
    n = len(patient)
    # A patient with IDC has it in many of its patches; one without, in few.
    share = np.where(rng.random(patients) < 0.45, rng.uniform(0.5, 0.9, patients), 0.08)
    labels = (rng.random(n) < share[patient]).astype(np.int64)
    # Nuclei: a smooth random field, bilinearly upsampled from a coarse grid, thresholded
    # at a per-patch density that is higher, but overlapping, for IDC.
    coarse = rng.random((n, 11, 11))
    grid = np.linspace(0, 10, side)
    low = np.floor(grid).astype(int).clip(max=9)
    frac = grid - low
    up = np.zeros((side, 11))
    up[np.arange(side), low] = 1 - frac
    up[np.arange(side), low + 1] += frac
    smooth = up @ coarse @ up.T
    density = np.where(labels == 1, rng.uniform(0.30, 0.65, n), rng.uniform(0.10, 0.40, n))
    ranked = np.sort(smooth.reshape(n, -1), axis=1)
    cut = ranked[np.arange(n), (density * (ranked.shape[1] - 1)).astype(int)]
    nuclei = (1 / (1 + np.exp((smooth - cut[:, None, None]) * 40))).astype(np.float32)
    shade = rng.normal(0, 12, size=(patients, 3)).astype(np.float32)[patient]  # per patient
    stroma = np.array([235, 180, 210], dtype=np.float32)[None, :] + shade
    stain = np.array([110, 55, 145], dtype=np.float32)[None, :] + shade
    images = stroma[:, :, None, None] + (stain - stroma)[:, :, None, None] * nuclei[:, None]
    images += rng.standard_normal(images.shape, dtype=np.float32) * 14
    images = np.clip(images, 0, 255).astype(np.uint8)
    # Patient ids as a hospital would store them: arbitrary numbers, not 0..P-1.
    ids = rng.choice(np.arange(100_000, 1_000_000), size=patients, replace=False)
    return {"train_images": images, "train_labels": labels, "patient_id": ids[patient]}


def _wisconsin() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return {"features": data.data.astype(np.float32), "labels": data.target.astype(np.int64)}


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype(np.uint8)[:, None, :, :]
    return {"images": images, "labels": data.target.astype(np.int64)}


# Each feature's published maximum (scikit-learn's DESCR for this data set, "Summary
# Statistics"). The figures are rounded, so the bounds go from 0 (every feature is a
# non-negative measurement) to 10% above them.
_WISCONSIN_MAXIMA = (
    28.11, 39.28, 188.5, 2501.0, 0.163, 0.345, 0.427, 0.201, 0.304, 0.097,
    2.873, 4.885, 21.98, 542.2, 0.031, 0.135, 0.396, 0.053, 0.079, 0.03,
    36.04, 49.54, 251.2, 4254.0, 0.223, 1.058, 1.252, 0.291, 0.664, 0.208,
)  # fmt: skip
_WISCONSIN_RANGES = ([0.0] * len(_WISCONSIN_MAXIMA), [round(1.1 * m, 6) for m in _WISCONSIN_MAXIMA])

DEMO_DATASETS: dict[str, DemoDataset] = {
    d.name: d
    for d in (
        DemoDataset(
            name="BreastCancerDataset",
            description=IDC_DESCRIPTION,
            x_asset="train_images",
            y_asset="train_labels",
            make=_idc_patches,
            bounds={"train_labels": (0, 1), "patient_id": (100_000, 999_999)},
            subject="patient_id",
        ),
        DemoDataset(
            name="BreastCancerWisconsin",
            description=(
                "Breast Cancer Wisconsin (Diagnostic): 30 features computed from digitized "
                "images of fine needle aspirates of breast masses (scikit-learn's copy). "
                "The labels 0 is malignant and 1 is benign."
            ),
            x_asset="features",
            y_asset="labels",
            make=_wisconsin,
            bounds={"features": _WISCONSIN_RANGES, "labels": (0, 1)},
        ),
        DemoDataset(
            name="Digits",
            description=(
                "Handwritten digits (UCI, scikit-learn's copy): 8 x 8 grey images with values "
                "0..16, one channel. The labels are the digits 0..9."
            ),
            x_asset="images",
            y_asset="labels",
            make=_digits,
            bounds={"images": (0, 16), "labels": (0, 9)},
        ),
    )
}


def demo_dataset(name: str) -> DemoDataset:
    try:
        return DEMO_DATASETS[name]
    except KeyError:
        raise KeyError(f"No demo dataset {name!r}. Demo datasets: {list(DEMO_DATASETS)}") from None


@cache
def _split(name: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(assets, train rows, test rows): a fixed split by subject where there are subjects."""
    spec = demo_dataset(name)
    assets = spec.make()
    n = len(assets[spec.y_asset])
    units = assets[spec.subject] if spec.subject else np.arange(n)
    distinct = np.unique(units)
    order = np.random.default_rng(_SEED).permutation(len(distinct))
    tested = distinct[order[: int(round(len(distinct) * _TEST_FRACTION))]]
    in_test = np.isin(units, tested)
    for array in assets.values():
        array.flags.writeable = False  # cached: callers get copies by fancy indexing
    return assets, np.flatnonzero(~in_test), np.flatnonzero(in_test)


def public_test_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the demo dataset's public test split; never on the node."""
    spec = demo_dataset(name)
    assets, _, test = _split(name)
    return assets[spec.x_asset][test], assets[spec.y_asset][test]


def private_train_split(name: str) -> dict[str, np.ndarray]:
    """The node's private train split, as {asset name: array}."""
    assets, train, _ = _split(name)
    return {asset: array[train] for asset, array in assets.items()}
