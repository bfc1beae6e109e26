"""Red-team round: RESOURCE LIMITS. A data scientist's inputs that the node's limits
(max_params, max_flops, max_fit_steps, MAX_LAYERS, body size, long-poll wait, login
backoff) accept, probed for work or memory that grows without a bound. Sizes are
scaled down and counted (rows handed to the engine, bytes stored) rather than timed, so
each test shows growth without exhausting the machine. Passing tests document bounded
behaviour."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from sqlalchemy import func, select

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.nodes import running_node
from veil import nn
from veil.engine import _trainer
from veil.nn.spec import MAX_LAYERS
from veil.server.db.tables.models import PrivateObjectRow

ROWS = 400
SIDE = 8  # images (None, 1, 8, 8)
PAD = 28  # Convolution(1, 1, padding=28): each row's output is 1 x 64 x 64 = 16 KiB
WIDE = SIDE + 2 * PAD
CPU = torch.device("cpu")
BIG_PAD = 100  # a 1 x 208 x 208 activation per row: the node steps 96 rows at a time


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with running_node(tmp_path_factory.mktemp("redteam-limits") / "node") as node:
        admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
        rng = np.random.default_rng(0)
        admin.datasets.upload(
            name="Pics",
            assets={
                "x": rng.integers(0, 256, (ROWS, 1, SIDE, SIDE)).astype(np.uint8),
                "y": rng.integers(0, 2, ROWS).astype(np.int64),
                "t": rng.integers(0, 256, (ROWS, 1, WIDE, WIDE)).astype(np.uint8),
            },
            bounds={"x": (0, 255), "y": (0, 1), "t": (0, 255)},
        )
        ds = make_ds(admin, node, budget=100.0)
        yield node, admin, ds
        ds.close()
        admin.close()


def _wide_output(ds: veil.Client):
    """A legal model whose every row has a large output and activation (padding is free
    of parameters): 2 params, ~50k FLOPs per row, 16 KiB of output per row."""
    model = nn.Model()
    model.add(nn.Convolution(1, 1, padding=PAD, input_shape=(None, 1, SIDE, SIDE)))
    return model.compile(to=ds, loss=nn.MeanSquaredError(), optimizer=nn.SGD(lr=0.01))


def _wide_activation(ds: veil.Client):
    """A legal model with a large activation per row (so a small chunk) and 2 outputs."""
    side = SIDE + 2 * BIG_PAD
    model = nn.Model()
    model.add(nn.Convolution(1, 1, padding=BIG_PAD, input_shape=(None, 1, SIDE, SIDE)))
    model.add(nn.AvgPool(side))
    model.add(nn.Flatten())
    model.add(nn.Dense(2, activation="softmax"))
    return model.compile(to=ds, loss=nn.CrossEntropy(), optimizer=nn.SGD(lr=0.01))


def _small(ds: veil.Client):
    model = nn.Model()
    model.add(nn.Flatten(input_shape=(None, 1, SIDE, SIDE)))
    model.add(nn.Dense(2, activation="softmax"))
    return model.compile(to=ds, loss=nn.CrossEntropy(), optimizer=nn.SGD(lr=0.01))


def _rows_into_engine(monkeypatch) -> list[int]:
    """Rows of each input tensor the engine builds (the whole batch, or one chunk)."""
    seen: list[int] = []
    real = _trainer.input_tensor

    def recording(batch, device):
        seen.append(int(np.asarray(batch).shape[0]))
        return real(batch, device)

    monkeypatch.setattr(_trainer, "input_tensor", recording)
    return seen


def _objects(node, model_id: str) -> tuple[int, int]:
    """(private objects the model has, bytes they hold in the database)."""
    with node.ctx.db.session() as session:
        count, size = session.execute(
            select(
                func.count(), func.coalesce(func.sum(func.length(PrivateObjectRow.data)), 0)
            ).where(PrivateObjectRow.model_id == model_id)
        ).one()
    return int(count), int(size)


def test_evaluate_over_every_row_reads_the_dataset_chunk_by_chunk(shared, monkeypatch) -> None:
    node, _admin, ds = shared
    data = ds.datasets["Pics"]
    model_ptr = _wide_activation(ds)
    seen = _rows_into_engine(monkeypatch)
    model_ptr.evaluate(data["x"], data["y"], epsilon=0.5)
    chunk = _trainer._chunk_rows(_trainer.ModelSpec.from_dict(model_ptr.spec), CPU)[1]
    assert chunk < ROWS // 4 and sum(seen) == ROWS and max(seen) <= chunk


def test_a_steps_input_is_held_in_chunks_not_whole(shared, monkeypatch) -> None:
    """A step on every row of a dataset converts its input chunk by chunk: memory follows
    the model's chunk, not the rows stepped (once ~10x the uint8 bytes of the batch)."""
    _node, _admin, ds = shared
    data = ds.datasets["Pics"]
    model_ptr = _wide_activation(ds)
    spec = _trainer.ModelSpec.from_dict(model_ptr.spec)
    chunk = _trainer._chunk_rows(spec, CPU)[0]
    assert chunk < ROWS // 4  # the node itself processes this model in pieces
    seen = _rows_into_engine(monkeypatch)
    model_ptr.step(data["x"], data["y"])  # no batch_size: every row of the dataset
    assert sum(seen) == ROWS and max(seen) <= chunk, seen


def test_a_step_keeping_too_many_predictions_is_refused_plainly(shared, monkeypatch) -> None:
    """A step keeps its rows' predictions (a private object): rows x outputs is capped,
    on public facts, before anything is computed or stored."""
    from veil.server.services import steps

    node, _admin, ds = shared
    data = ds.datasets["Pics"]
    model_ptr = _wide_output(ds)
    per_row = WIDE**2
    monkeypatch.setattr(steps, "MAX_STEP_VALUES", (ROWS // 2) * per_row)
    model_ptr.step(data["x"][0 : ROWS // 2], data["t"][0 : ROWS // 2])
    count, _ = _objects(node, model_ptr.id)
    with pytest.raises(veil.ValidationError, match="keeps its rows' predictions"):
        model_ptr.step(data["x"], data["t"])
    assert _objects(node, model_ptr.id)[0] == count  # nothing stored
    assert model_ptr.refresh()._info["steps"] == 1


def test_limits_refuse_huge_waits_fits_drafts_and_bodies(shared) -> None:
    node, _admin, ds = shared
    data = ds.datasets["Pics"]
    model_ptr = _small(ds)
    headers = {"Authorization": f"Bearer {ds._http.token}"}
    with httpx.Client(base_url=node.url + "/api/v1", headers=headers, timeout=30) as raw:
        # a long poll waits at most MAX_WAIT_S: more is refused; an idle model answers at once
        assert raw.get(f"/models/{model_ptr.id}/progress", params={"wait": 1e9}).status_code == 422
        # a fit past max_fit_steps is refused before it is queued
        with pytest.raises(veil.VeilError):
            model_ptr.quote(data["x"], data["y"], max_iter=10**9, batch_size=1)
        # a body past max_request_bytes is refused before it is read
        huge = {"spec": {"layers": [0.0] * 400_000}}
        assert raw.post("/models", json=huge).status_code == 413
        # a spec, and a draft grown layer by layer, stop at MAX_LAYERS
        spec = dict(model_ptr.spec)
        spec["layers"] = [*spec["layers"], *[{"class_name": "ReLU", "config": {}}] * MAX_LAYERS]
        assert raw.post("/models", json={"spec": spec}).status_code == 422
        draft = raw.post("/models/drafts").json()["id"]
        first = {"class_name": "Flatten", "config": {"input_shape": [None, 10**6, 10**6]}}
        url, relu = f"/models/drafts/{draft}/layers", {"class_name": "ReLU", "config": {}}
        codes = [raw.post(url, json={"layer": first}).status_code]
        codes += [raw.post(url, json={"layer": relu}).status_code for _ in range(MAX_LAYERS)]
        assert codes[:MAX_LAYERS] == [200] * MAX_LAYERS and codes[-1] in (409, 422)
        # a draft of 10^12 inputs per row is refused at compile by max_flops
        assert raw.post(f"/models/drafts/{draft}/compile", json={}).status_code in (409, 422)


def test_repeated_login_failures_are_throttled(shared) -> None:
    node, _admin, _ds = shared
    codes = []
    with httpx.Client(base_url=node.url + "/api/v1", timeout=30) as raw:
        for _ in range(7):
            body = {"email": "victim@lab.org", "password": "wrong-password-1"}
            codes.append(raw.post("/auth/login", json=body).status_code)
    assert codes[:5] == [401] * 5 and codes[-1] == 429
