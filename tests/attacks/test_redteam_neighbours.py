"""Red team, round nine: DIFFERENTIAL testing on neighbouring datasets.

Two nodes hold datasets with the same public facts (names, shapes, dtypes, declared
bounds, rows, subjects) whose private values differ: rows moved to a declared bound or
to zeros, undeclared features and regression targets at +-3e38 (float32's edge),
labels flipped or far outside any class (2^62, -5), images saturated or blank, a person
owning 3 rows instead of 8, a slice whose rows belong to the held-out person on one node
and to the first training person on the other. A data scientist then runs the SAME
calls on both, with the public client and raw HTTP with its token: metadata, mocks,
slices, statistics, drafts, steps (one-row batches, validation_split, batch_size),
object publishes, evaluate, quotes, fits (validation, rows_per_subject, target_epsilon,
long polls, cancel), weights, model and release listings, the budget and the dashboard.

Every answer is recorded with ids, timestamps and the noised values of releases taken
out (a release's noise std, bound, shape and charge stay in); the two records must be
equal. Any difference is something computed from private data that reached the data
scientist without a charged release; a difference in `cost` or `spent_after` would be a
price that depends on private values.
"""

from __future__ import annotations

import difflib
import pprint
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors

import veil
from tests.attacks.scenario import raw_client
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, DS_PASSWORD, login
from tests.nodes import RunningNode, running_node

ROWS = 24
_ENDED = ("done", "failed", "cancelled")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_REFERENCE = re.compile(r"reference [0-9a-f]{12}")
# Noised release values and what is computed from them: numbers that differ on every
# draw. Their noise std ("std" as a number), bound, shape and charge are compared.
_NOISED = {
    "value",
    "clipped",
    "loss",
    "accuracy",
    "loss_clipped",
    "accuracy_clipped",
    "val_loss",
    "val_accuracy",
    "val_loss_clipped",
    "val_accuracy_clipped",
    "mean",
}
_WHEN = {"created_at", "elapsed"}  # wall-clock facts, not data


# The neighbours ------------------------------------------------------------------------


def _arrays(variant: str) -> dict[str, np.ndarray]:
    """One node's private arrays: variant "B" is "A" with some rows changed."""
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.uniform(-1, 1, (ROWS, 4)).astype(np.float32),  # declared (-10, 10)
        "w": rng.normal(size=(ROWS, 4)).astype(np.float32),  # no bounds: any finite float
        "y": rng.integers(0, 2, ROWS).astype(np.int64),  # declared (0, 1)
        "u": rng.integers(0, 3, ROWS).astype(np.int64),  # no bounds: any int64
        "t": rng.normal(size=(ROWS, 1)).astype(np.float32),  # a regression target
        "img": rng.integers(0, 17, (ROWS, 1, 8, 8)).astype(np.uint8),  # uint8's full range
        # People: rows 0-7 are person 0; Held: rows 0-7 are person 100, the last rank.
        "person": np.concatenate([np.zeros(8), np.arange(1, 9), np.arange(1, 9)]),
        "held": np.concatenate([np.full(8, 100), np.arange(1, 9), np.arange(1, 9)]),
    }
    if variant == "B":
        arrays["x"][3], arrays["x"][5] = 10.0, 0.0  # at the declared bound; all zeros
        arrays["w"][3], arrays["w"][4] = 3e38, -3e38  # float32's edge: overflows in training
        arrays["y"][3] = 1 - arrays["y"][3]
        arrays["u"][3], arrays["u"][4] = 2**62, -5  # no class of any model
        arrays["t"][3] = 3e38
        arrays["img"][3], arrays["img"][5] = 255, 0
        # Person 0 owns 3 rows, person 1 eight (9 people still); Held's rows 0-7 are
        # person 0's: the first training person instead of the held-out one.
        arrays["person"] = np.concatenate(
            [np.zeros(3), np.ones(6), np.arange(2, 9), np.arange(1, 9)]
        )
        arrays["held"] = np.concatenate([np.zeros(8), np.arange(1, 9), np.arange(1, 9)])
    arrays["person"] = arrays["person"].astype(np.int64)
    arrays["held"] = arrays["held"].astype(np.int64)
    return arrays


_TABLE = ("x", "w", "y", "u", "t", "img")


def _upload(admin: veil.Client, arrays: dict[str, np.ndarray]) -> None:
    admin.datasets.upload(
        name="Table",
        assets={name: arrays[name] for name in _TABLE},
        bounds={"x": (-10, 10), "y": (0, 1)},
        mock={
            "w": np.zeros((4, 4), np.float32),
            "u": np.zeros(4, np.int64),
            "t": np.zeros((4, 1), np.float32),
        },
    )
    for name, person in (("People", "person"), ("Held", "held")):
        admin.datasets.upload(
            name=name,
            assets={"x": arrays["x"], "y": arrays["y"], "person": arrays[person]},
            bounds={"x": (-10, 10), "y": (0, 1), "person": (0, 100)},
            subject="person",
        )


@dataclass
class _Node:
    node: RunningNode
    admin: veil.Client


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory) -> Iterator[tuple[_Node, _Node]]:
    """Two SQLite nodes whose datasets are neighbours (see `_arrays`)."""
    with (
        running_node(tmp_path_factory.mktemp("neighbour-a") / "node") as node_a,
        running_node(tmp_path_factory.mktemp("neighbour-b") / "node") as node_b,
    ):
        nodes = []
        for node, variant in ((node_a, "A"), (node_b, "B")):
            admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
            _upload(admin, _arrays(variant))
            nodes.append(_Node(node, admin))
        yield nodes[0], nodes[1]
        for each in nodes:
            each.admin.close()


# What a data scientist observes -------------------------------------------------------


def _numbers(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, list) and all(_numbers(v) for v in value)


def _dropped(key: str, value: object) -> bool:
    """Wall-clock facts and noised numbers (statistics' std per channel is computed from
    the noised moments; a release's noise std is one number and stays)."""
    noised = key in _NOISED or (key == "std" and isinstance(value, list))
    return key in _WHEN or (noised and _numbers(value))


@dataclass
class _Record:
    """Every answer a data scientist got, less ids, times and noised values."""

    ids: dict[str, str] = field(default_factory=dict)
    seen: list[tuple] = field(default_factory=list)
    node_name: str = "<node>"  # a random name and a port per node: public, and no data
    node_url: str = "<url>"

    def _id(self, match: re.Match) -> str:
        return self.ids.setdefault(match.group(0), f"<id{len(self.ids)}>")

    def norm(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.norm(v) for k, v in value.items() if not _dropped(k, v)}
        if isinstance(value, list):
            return [self.norm(v) for v in value]
        if isinstance(value, str):
            value = value.replace(self.node_name, "<node>").replace(self.node_url, "<url>")
            return _UUID.sub(self._id, _REFERENCE.sub("reference <ref>", value))
        if isinstance(value, float):
            return float(f"{value:.12g}")
        return value

    def answer(self, what: tuple, answer: httpx.Response) -> httpx.Response:
        kind = answer.headers.get("content-type", "")
        if "json" in kind:
            body: object = self.norm(answer.json())
        elif "octet-stream" in kind:
            body = ("bytes", len(answer.content))
        else:
            body = ("text", self.norm(answer.text))
        self.seen.append((self.norm(list(what)), answer.status_code, body))
        return answer

    def note(self, what: str, value: object) -> None:
        self.seen.append((self.norm(what), self.norm(value)))


class _Caller:
    """Raw HTTP with a data scientist's token; every answer goes into the record."""

    def __init__(self, node: RunningNode, ds: veil.Client, record: _Record) -> None:
        self.raw = raw_client(node, ds)
        self.pages = httpx.Client(base_url=node.url, cookies={"veil_session": ds._http.token})
        self.record = record

    def get(self, path: str, **params: object) -> httpx.Response:
        return self.record.answer(("GET", path, params), self.raw.get(path, params=params))

    def post(self, path: str, body: dict | None = None) -> httpx.Response:
        return self.record.answer(("POST", path, body), self.raw.post(path, json=body))

    def until_ended(self, model_id: str) -> None:
        """Long-poll the model's job to its end (not recorded: the moments depend on
        the machine), then record the final progress."""
        deadline = time.monotonic() + 60
        while True:
            state = self.raw.get(f"/models/{model_id}/progress", params={"wait": 5}).json()
            if state["status"] not in ("queued", "running"):
                break
            assert time.monotonic() < deadline, state
        self.get(f"/models/{model_id}/progress")


Scenario = Callable[[_Caller, veil.Client, dict[str, dict[str, str]]], None]


def _run_on_both(neighbours, email: str, scenario: Scenario) -> tuple[_Record, _Record]:
    records = []
    for side in neighbours:
        side.admin.users.create(email=email, password=DS_PASSWORD, name="DS", budget=1e6)
        ds = login(side.node, email, DS_PASSWORD)
        record = _Record(node_name=ds.node["name"], node_url=side.node.url)
        caller = _Caller(side.node, ds, record)
        listing = ds._http.get("/datasets")
        assets = {d["name"]: {a["name"]: a["id"] for a in d["assets"]} for d in listing}
        scenario(caller, ds, assets)
        caller.raw.close()
        caller.pages.close()
        ds.close()
        records.append(record)
    return records[0], records[1]


def _assert_alike(a: _Record, b: _Record) -> None:
    assert len(a.seen) == len(b.seen)
    for seen_a, seen_b in zip(a.seen, b.seen, strict=True):
        if seen_a != seen_b:
            lines = difflib.unified_diff(
                pprint.pformat(seen_a, width=100).splitlines(),
                pprint.pformat(seen_b, width=100).splitlines(),
                lineterm="",
            )
            pytest.fail("the neighbours answered differently:\n" + "\n".join(lines))


def test_the_neighbours_differ_in_private_values_only(neighbours) -> None:
    """The premise: the admin reads different rows on the two nodes; the public facts
    every data scientist sees are the same."""
    a, b = neighbours
    public, private = [], []
    for side in (a, b):
        public.append(_Record().norm(side.admin._http.get("/datasets")))
        table = side.admin.datasets["Table"]
        private.append({name: table[name].get() for name in _TABLE})
    assert public[0] == public[1]
    for name in _TABLE:
        assert private[0][name].shape == private[1][name].shape
        assert not np.array_equal(private[0][name], private[1][name]), name


# The attacks ---------------------------------------------------------------------------


def _metadata_and_statistics(call: _Caller, ds: veil.Client, assets: dict) -> None:
    for dataset in call.get("/datasets").json():
        call.get(f"/datasets/{dataset['id']}")
        for asset in dataset["assets"]:
            pointer = asset["id"]
            call.get(f"/assets/{pointer}")
            mock = call.get(f"/assets/{pointer}/mock")
            call.record.note("mock bytes", mock.content.hex())  # public: must be equal
            call.get(f"/assets/{pointer}/data")
            for rows in ({"start": 0, "stop": 1}, {"start": 3, "stop": 4}, {"start": 0, "stop": 8}):
                view = call.post(f"/assets/{pointer}/slice", rows).json()["id"]
                call.post(f"/assets/{view}/statistics/quote", {"sigma": 1.0})
                call.post(f"/assets/{view}/statistics", {"sigma": 1.0})
            call.post(f"/assets/{pointer}/statistics", {"epsilon": 0.5})
    call.get("/budget")


def test_metadata_mocks_slices_and_statistics_answer_alike(neighbours) -> None:
    a, b = _run_on_both(neighbours, "meta@lab.org", _metadata_and_statistics)
    _assert_alike(a, b)
    released = [s[2] for s in a.seen if s[1] == 201 and s[2].get("kind") == "statistics"]
    assert len(released) == 4 * 9 and all(r["cost"] > 0 for r in released)  # float assets


def _layer(name: str, **config: object) -> dict:
    return {"class_name": name, "config": config}


def _spec(layers: list[dict], input_shape: list[int], loss: str) -> dict:
    return {
        "format": 1,
        "input_shape": [None, *input_shape],
        "layers": layers,
        "loss": {"class_name": loss, "config": {}},
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
    }


_LOGISTIC = _spec([_layer("Dense", units=1, activation="sigmoid")], [4], "BinaryCrossEntropy")


def _models(call: _Caller, assets: dict) -> dict[str, tuple[dict, str, str]]:
    """Models on the neighbouring assets: each (spec, x pointer, y pointer)."""
    table, people, held = assets["Table"], assets["People"], assets["Held"]
    held_x = call.post(f"/assets/{held['x']}/slice", {"start": 0, "stop": 8}).json()["id"]
    held_y = call.post(f"/assets/{held['y']}/slice", {"start": 0, "stop": 8}).json()["id"]
    softmax3 = _spec([_layer("Dense", units=3, activation="softmax")], [4], "CrossEntropy")
    linear = _spec([_layer("Dense", units=1, activation=None)], [4], "MeanSquaredError")
    overflow = _spec(
        [_layer("Rescaling", scale=1e6, offset=0.0)] * 7
        + [_layer("Dense", units=1, activation="sigmoid")],
        [4],
        "BinaryCrossEntropy",
    )
    images = _spec(
        [
            _layer("Convolution", filters=2, kernel_size=[3, 3], activation="relu"),
            _layer("GroupNorm", groups=1),
            _layer("Flatten"),
            _layer("Dropout", rate=0.5),
            _layer("Dense", units=3, activation="softmax"),
        ],
        [1, 8, 8],
        "CrossEntropy",
    )
    return {
        "bound row": (_LOGISTIC, table["x"], table["y"]),
        "float32 edge": (_LOGISTIC, table["w"], table["y"]),
        "far labels": (softmax3, table["x"], table["u"]),
        "edge targets": (linear, table["w"], table["t"]),
        "overflowing model": (overflow, table["x"], table["y"]),
        "saturated images": (images, table["img"], table["u"]),
        "people": (_LOGISTIC, people["x"], people["y"]),
        "held-out slice": (_LOGISTIC, held_x, held_y),
    }


def _steps_objects_and_evaluate(call: _Caller, ds: veil.Client, assets: dict) -> None:
    for spec, x, y in _models(call, assets).values():
        model = call.post("/models", {"spec": spec}).json()["id"]
        batches = ({"start": 0, "stop": 1}, {"start": 3, "stop": 4}, {"start": 0, "stop": 8}, None)
        for rows in batches:
            body = {"x": x, "y": y} | ({"x_rows": rows, "y_rows": rows} if rows else {})
            for extra in ({}, {"validation_split": 0.5}, {"batch_size": 1}):
                step = call.post(f"/models/{model}/step", body | extra)
                if step.status_code != 200:
                    continue
                for kind in ("loss", "predictions"):
                    object_id = step.json()[kind]["id"]
                    for noise in ({"sigma": 1.0}, {"epsilon": 1.0}, {"sigma": 1.0, "clip": 0.5}):
                        released = call.post(f"/objects/{object_id}/publish", noise)
                        if released.status_code == 201:
                            call.get(f"/releases/{released.json()['id']}/result")
            call.post(f"/models/{model}/evaluate", body | {"epsilon": 1.0})
        call.get(f"/models/{model}")


def test_steps_objects_and_evaluate_answer_alike_on_extreme_rows(neighbours) -> None:
    """One-row batches on exactly the changed row, held-out halves, guards, every kind
    of object publish and evaluate: the same answers, prices, shapes and refusals."""
    a, b = _run_on_both(neighbours, "steps@lab.org", _steps_objects_and_evaluate)
    _assert_alike(a, b)
    statuses = {s[1] for s in a.seen}
    assert {200, 201, 422} <= statuses and not [s for s in statuses if s >= 500]


def _weights_header(content: bytes) -> list:
    """A weights release's public facts: its tensors' names, shapes and dtypes."""
    tensors = load_safetensors(content)
    return sorted((name, list(t.shape), str(t.dtype)) for name, t in tensors.items())


def _fits_progress_and_weights(call: _Caller, ds: veil.Client, assets: dict) -> None:
    plans = (
        {"max_iter": 2, "batch_size": 4, "validation_split": 0.25},
        {"max_iter": 1, "batch_size": 2, "validation_split": 0.5, "rows_per_subject": 2},
        {"max_iter": 1, "batch_size": 2, "validation_split": 0.5, "target_epsilon": 2.0},
    )
    for spec, x, y in _models(call, assets).values():
        model = call.post("/models", {"spec": spec}).json()["id"]
        call.get(f"/models/{model}/progress")
        for plan in plans:
            call.post(f"/models/{model}/quote", {"x": x, "y": y, **plan})
            if call.post(f"/models/{model}/fit", {"x": x, "y": y, **plan}).status_code == 202:
                call.until_ended(model)
                call.get(f"/models/{model}/progress", wait=0.5)  # ended: answers at once
        call.post(f"/models/{model}/cancel")
        published = call.post(f"/models/{model}/weights/publish")
        if published.status_code == 201:
            result = call.raw.get(f"/releases/{published.json()['id']}/result")
            call.record.note("weights", _weights_header(result.content))
        call.get(f"/models/{model}")
    call.get("/models")


def test_fits_progress_and_weights_answer_alike(neighbours) -> None:
    """Fits on features at float32's edge, on far labels, on people owning different
    rows and on a slice all held out on one node and all trained on the other: the same
    job ends, progress fields, released metric keys, prices and weight shapes."""
    a, b = _run_on_both(neighbours, "fits@lab.org", _fits_progress_and_weights)
    _assert_alike(a, b)
    ends = [s[2] for s in a.seen if s[0][0] == "GET" and str(s[0][1]).endswith("/progress")]
    finished = [e for e in ends if isinstance(e, dict) and e.get("job_id")]
    assert finished and all(e["status"] == "done" and e["error"] is None for e in finished)
    assert any(e["unit"] == "subject" for e in finished)


def _ledger_views_and_pages(call: _Caller, ds: veil.Client, assets: dict) -> None:
    table = ds.datasets["Table"]
    model = call.post("/models", {"spec": _LOGISTIC}).json()["id"]
    body = {"x": table["x"].id, "y": table["y"].id, "max_iter": 1, "batch_size": 4}
    call.post(f"/models/{model}/fit", body | {"validation_split": 0.25})
    call.until_ended(model)
    call.post(f"/models/{model}/weights/publish")
    call.post(f"/assets/{table['x'].id}/statistics", {"epsilon": 0.5})
    call.get("/releases")
    call.get("/budget")
    call.get("/ledger")
    call.get("/users/me")
    call.get("/node")
    call.record.note("client views", [repr(ds.datasets), repr(ds.privacy_budget)])
    call.record.note("releases", [(r.kind, r.cost, r.spent_after) for r in ds.releases])
    for path in ("/", "/jobs", "/datasets", "/ledger", f"/ledger?model={model}"):
        text = call.pages.get(path).text
        text = re.sub(r'name="csrf" value="[0-9a-f]+"', "<csrf>", text)
        text = re.sub(
            r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(\+00:00|Z| UTC)?", "<t>", text
        )
        text = re.sub(r'"x": [0-9.]+', '"x": <t>', text)  # the chart's times, in ms
        text = _UUID.sub(call.record._id, text)
        text = re.sub(r"\b[0-9a-f]{8}\b", "<short id>", text)
        call.record.note(path, text)


def test_ledger_views_budget_and_dashboard_pages_answer_alike(neighbours) -> None:
    a, b = _run_on_both(neighbours, "views@lab.org", _ledger_views_and_pages)
    _assert_alike(a, b)
