"""A node that trains on a GPU (`VEIL_DEVICE=cuda`): the three flows end to end.

Skipped where torch sees no GPU (CI has none); run on a machine with one.
"""

import numpy as np
import pytest
import torch

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.nodes import running_node
from veil import nn

from .data import upload_images

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def _cnn() -> nn.Model:
    model = nn.Model()
    model.add(nn.Rescaling(1 / 255, input_shape=(None, 1, 28, 28)))
    model.add(nn.Convolution(4, 3, activation="relu"))
    model.add(nn.MaxPool(2))
    model.add(nn.Flatten())
    model.add(nn.Dense(1))
    model.add(nn.Sigmoid())
    return model


def test_a_gpu_node_fits_steps_evaluates_and_publishes(tmp_path) -> None:
    with running_node(tmp_path / "node", device="cuda") as node:
        admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
        upload_images(admin)
        ds = make_ds(admin, node, budget=100.0)
        data = ds.datasets["Patches"]
        x, y = data["train_images"], data["train_labels"]
        model_ptr = _cnn().compile(to=ds, loss=nn.BinaryCrossEntropy(), optimizer=nn.Adam(0.01))
        final = model_ptr.fit(x, y, max_iter=3, batch_size=40, validation_split=0.2)
        assert final["status"] == "done" and final["epoch"] == 3
        loss, _ = model_ptr.step(x[0:32], y[0:32])
        assert np.isfinite(loss.publish(sigma=1.0).get())
        live = node.ctx.live._cache[model_ptr.id]  # the model the step trained in memory
        assert next(live.trainer.module.parameters()).device.type == "cuda"
        out = model_ptr.evaluate(x[0:100], y[0:100], epsilon=0.5)
        assert np.isfinite(out["loss"]) and out["cost"] > 0
        weights = model_ptr.weights().publish().get()
        assert all(np.isfinite(w).all() for w in weights.values())
