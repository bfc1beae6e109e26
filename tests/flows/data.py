"""Small private datasets for flow tests, uploaded by the admin through the client."""

from __future__ import annotations

import numpy as np

import veil
from veil import nn


def image_data(n: int = 240, side: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images N x 1 x side x side whose label is whether the centre is bright."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n).astype(np.int64)
    images = rng.integers(0, 90, size=(n, 1, side, side)).astype(np.uint8)
    lo, hi = side // 4, 3 * side // 4
    images[labels == 1, :, lo:hi, lo:hi] += 150
    return images, labels


def upload_images(admin: veil.Client, name: str = "Patches", **kw: int) -> None:
    images, labels = image_data(**kw)
    admin.datasets.upload(
        name=name,
        description="synthetic patches",
        assets={"train_images": images, "train_labels": labels},
        bounds={"train_labels": (0, 1)},
    )


def image_mlp() -> nn.Model:
    """A small MLP for the 1 x 28 x 28 patches, ending in a sigmoid."""
    model = nn.Model()
    model.add(nn.Rescaling(1 / 255, input_shape=(None, 1, 28, 28)))
    model.add(nn.Flatten())
    model.add(nn.Dense(16, activation="relu"))
    model.add(nn.Dense(1))
    model.add(nn.Sigmoid())
    return model
