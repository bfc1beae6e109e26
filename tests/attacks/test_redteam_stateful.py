"""Red team, round twelve: a STATEFUL attack, hypothesis' rule-based state machine.

One real node (SQLite, a uvicorn server on a free port) is driven through the public
client, and raw HTTP where the client would refuse, by two data scientists and the
admin, in an order hypothesis draws (each run with fresh accounts, on the node the
runs before it left: their datasets, models and jobs): models compiled (flow I
and II, with hostile configs: one-row batches, a softmax with fewer classes than the
labels, a huge Rescaling, specs past the whitelist), steps on slices and stored views,
fits (waited for or left running), progress polls (long ones too), cancels, evaluates,
publishes of weights and of a step's objects, one user's models, objects, views and
releases tried by the other, logouts and logins, budgets moved, accounts disabled (and
a fresh one taking the place), datasets deleted and uploaded again.
Since the per-user quotas and deletes landed: one's own models deleted (refused while
training, NotFound after), a model's objects or one object deleted (then NotFound to
publish or delete again), drafts discarded, the other's model and objects deleted
(NotFound, nothing of the victim's touched), and the admin lowering each per-user
limit to what a data scientist holds (its next create refused with QuotaExceeded) or
putting it back.

The oracle, after every rule: no answer is a 5xx; every error answer is a typed body
(`{"error", "message", "detail"}`) with a clear message, never an internal fault; no
answer, error, job error or progress field carries a private value (the data holds
markers no public fact could produce); progress shows public fields only; each user's
releases add up to the epsilon its ledger line says it spent, and a release never took
it past the budget in force; a data scientist lists only its own models and releases
and meets another's as NotFound; what each user holds on the node (models, private
objects, uncompiled drafts) is exactly what it made and kept, and its quota count of
objects agrees (so a refused create left no row, and a delete freed what it took); a
create is refused only past its limit, counted from the user's own. After the last
rule the node settles: every job ends (none running, none queued), no model stays held
by a job, and a failed job failed for a typed reason.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

import veil
from tests.attacks.scenario import PUBLIC_PROGRESS
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, DS_PASSWORD
from tests.nodes import RunningNode, running_node
from veil import nn
from veil.server.db.tables.accounts import UsageRow, UserRow
from veil.server.db.tables.models import DraftRow, JobRow, ModelRow, PrivateObjectRow

ROWS = 32
PEOPLE_ROWS = 24
# Private values no public fact could produce: if one shows in an answer, it leaked.
_MARK = 4242.4242
_MARK_TEXT = (b"4242.42", b"4242,42")
# The errors a node answers on purpose: never ServerError (a fault) nor a bare VeilError.
_TYPED = {
    cls.__name__
    for cls in (
        veil.AuthenticationError,
        veil.PermissionDenied,
        veil.NotFound,
        veil.ValidationError,
        veil.SpecError,
        veil.OutOfRange,
        veil.RequestTooLarge,
        veil.Conflict,
        veil.BudgetExceeded,
        veil.RateLimited,
        veil.JobFailed,
        veil.QuotaExceeded,
    )
}
# The per-user limits the admin moves in a run (each run starts from these): defaults.
LIMITS = {"max_models": 100, "max_drafts": 100, "max_objects": 100_000, "max_active_jobs": 20}
_ENDED = ("done", "failed", "cancelled")
_emails = itertools.count()


def _rows_with_marks(rows: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)
    x[3, 2], x[rows - 5, 0], x[rows // 2, 3] = _MARK, -_MARK, _MARK
    return x


def _upload(admin: veil.Client, name: str, seed: int) -> None:
    """`A` is row-level: x (with marks), binary y, and labels `k` in 0..4 with no bounds
    (a mock only), so a three-class softmax meets labels it cannot take. `P` is
    person-level: rows 0-7 are one person, the rest eight people twice."""
    if name == "A":
        x = _rows_with_marks(ROWS, seed)
        k = np.arange(ROWS, dtype=np.int64) % 5
        admin.datasets.upload(
            name="A",
            assets={"x": x, "y": (x[:, :1] > 0).astype(np.float32), "k": k},
            mock={"k": np.zeros(8, dtype=np.int64)},
            bounds={"x": (-5000, 5000), "y": (0, 1)},
        )
        return
    person = np.concatenate([np.zeros(8), np.arange(1, 9), np.arange(1, 9)]).astype(np.int64)
    x = _rows_with_marks(PEOPLE_ROWS, seed)
    admin.datasets.upload(
        name="P",
        assets={"x": x, "y": (x[:, :1] > 0).astype(np.int64), "person": person},
        bounds={"x": (-5000, 5000), "y": (0, 1), "person": (0, 100)},
        subject="person",
    )


# Models: small, whitelisted, some hostile ---------------------------------------------


def _spec(kind: str) -> nn.Model:
    model = nn.Model()
    if kind == "sigmoid":
        model.add(nn.Dense(1, activation="sigmoid", input_shape=(None, 4)))
    elif kind == "huge_rescaling":  # the marks become 4e9: saturated outputs, huge losses
        model.add(nn.Rescaling(1e6, offset=-1e6, input_shape=(None, 4)))
        model.add(nn.Dense(1, activation="sigmoid"))
    elif kind == "linear":  # no natural bound on its predictions: publish needs clip=
        model.add(nn.Dense(1, input_shape=(None, 4)))
    elif kind == "softmax3":  # labels `k` reach 4: rows that do not fit, privately
        model.add(nn.Dense(8, activation="relu", input_shape=(None, 4)))
        model.add(nn.Dense(3, activation="softmax"))
    else:
        raise AssertionError(kind)
    return model


KINDS = ("sigmoid", "huge_rescaling", "linear", "softmax3")


def _raw_spec(*layers: dict, **changes: object) -> dict:
    """A spec as the client sends it, with layers and fields the client would refuse."""
    spec = {
        "format": 1,
        "input_shape": [None, 4],
        "layers": list(layers),
        "loss": {"class_name": "BinaryCrossEntropy", "config": {}},
        "optimizer": {"class_name": "Adamax", "config": {"lr": 0.002}},
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "loss_bound": 10.0,
    }
    return {**spec, **changes}


def _layer(name: str, **config: object) -> dict:
    return {"class_name": name, "config": config}


# Raw specs the client would refuse to build; the node must refuse them as plainly.
HOSTILE_SPECS = (
    _raw_spec(_layer("Rescaling", scale=1e300, offset=0.0, input_shape=[None, 4])),
    _raw_spec(_layer("Rescaling", scale=1e7, offset=0.0, input_shape=[None, 4])),
    _raw_spec(_layer("BatchNorm", input_shape=[None, 4])),
    _raw_spec(_layer("Lambda", function="__import__('os')", input_shape=[None, 4])),
    _raw_spec(),
    _raw_spec(_layer("Dense", units=10**12, activation=None, input_shape=[None, 4])),
    _raw_spec(
        _layer("Dense", units=1, activation="sigmoid", input_shape=[None, 4]),
        noise_multiplier=0.0,
        max_grad_norm=1e300,
    ),
    _raw_spec(
        _layer("Dense", units=1, activation="sigmoid", input_shape=[None, 4]),
        loss_bound=1e308,
    ),
)


@dataclass
class _Actor:
    """A data scientist's account and what it made; `client` is None once logged out."""

    email: str
    client: veil.Client | None
    budget: float
    budget_ceiling: float  # the most this account's budget was since the last check
    models: dict[str, str] = field(default_factory=dict)  # id -> kind
    objects: dict[str, str] = field(default_factory=dict)  # id -> its model's id
    drafts: int = 0  # uncompiled drafts (flow I) held
    gone_objects: set[str] = field(default_factory=set)  # deleted, alone or with a model
    views: list[str] = field(default_factory=list)
    releases: set[str] = field(default_factory=set)
    vetted: set[str] = field(default_factory=set)  # releases the oracle has checked


@dataclass(frozen=True)
class _Answer:
    who: str
    method: str
    path: str
    status: int
    body: bytes


class _Recorder(httpx.BaseTransport):
    """The real socket, keeping every answer for the oracle."""

    def __init__(self, who: str, log: list[_Answer]) -> None:
        self._inner = httpx.HTTPTransport()
        self._who, self._log = who, log

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        body = response.read()
        self._log.append(
            _Answer(self._who, request.method, request.url.path, response.status_code, body)
        )
        return response

    def close(self) -> None:
        self._inner.close()


def _attempt(call, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    """`(call(...)'s answer, None)`, or `(None, the error)` when the node refused it
    with a typed error."""
    try:
        return call(*args, **kwargs), None
    except veil.ServerError:
        raise
    except veil.VeilError as exc:
        assert type(exc).__name__ in _TYPED, exc
        return None, exc


def _typed(call, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    """`call(...)`'s answer, or None when the node refused it with a typed error."""
    return _attempt(call, *args, **kwargs)[0]


def _pick(items, index: int):  # noqa: ANN001, ANN202
    items = sorted(items) if isinstance(items, set) else list(items)
    return items[index % len(items)]


class NodeMachine(RuleBasedStateMachine):
    """Two data scientists and the admin on `node`; each run brings fresh accounts to
    the node the earlier runs left (their datasets, models and jobs included)."""

    def __init__(self, node: RunningNode) -> None:
        super().__init__()
        self.node = node
        self.answers: list[_Answer] = []
        self.checked = 0
        self.admin = self._login("admin", ADMIN_EMAIL, ADMIN_PASSWORD)
        self.limits = dict(LIMITS)  # an earlier run may have left them low
        self.admin.update_node(**self.limits)
        there = set(self.admin.datasets.names())
        self.datasets = {name: True for name in ("A", "P")}
        for seed, name in enumerate(self.datasets):
            if name not in there:
                _upload(self.admin, name, seed)
        self.actors = [self._new_actor(slot) for slot in range(2)]
        self.retired: list[_Actor] = []

    # Plumbing -------------------------------------------------------------------------

    def _login(self, who: str, email: str, password: str) -> veil.Client:
        transport = _Recorder(who, self.answers)
        return veil.login(
            email=email, password=password, url=self.node.url, transport=transport, verbose=False
        )

    def _new_actor(self, slot: int) -> _Actor:
        email = f"ds{next(_emails)}@lab.org"
        self.admin.users.create(email=email, password=DS_PASSWORD, budget=20.0)
        actor = _Actor(email, self._login(f"ds{slot}", email, DS_PASSWORD), 20.0, 20.0)
        actor.models[_spec("sigmoid").compile(to=actor.client).id] = "sigmoid"
        return actor

    def _raw(self, slot: int, actor: _Actor) -> httpx.Client:
        token = actor.client._http.token if actor.client else "none"
        return httpx.Client(
            base_url=self.node.url + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            transport=_Recorder(f"ds{slot}", self.answers),
            timeout=60,
        )

    def _pointers(self, actor: _Actor, name: str) -> tuple[veil.AssetPointer, ...] | None:
        data = _typed(lambda: actor.client.datasets[name])
        if data is None:
            return None
        if name == "P":
            return data["x"], data["y"], data["y"]
        return data["x"], data["y"], data["k"]

    def _model(self, actor: _Actor, model_id: str) -> veil.ModelPointer | None:
        return _typed(actor.client.models.get, model_id)

    def _working(self, slot: int, which: int, dataset: str) -> tuple | None:
        """(actor, model id, model, (x, y, k) of `dataset`) for a rule that trains or
        evaluates, or None if the actor has no session, model or dataset to use now."""
        actor = self.actors[slot]
        if actor.client is None or not actor.models:
            return None
        model_id = _pick(actor.models, which)
        model, pointers = self._model(actor, model_id), self._pointers(actor, dataset)
        if model is None or pointers is None:
            return None
        return actor, model_id, model, pointers

    def teardown(self) -> None:
        try:
            self._settle()
        finally:
            for actor in [*self.actors, *self.retired]:
                if actor.client is not None:
                    actor.client.close()
            self.admin.close()

    # Rules: the data scientists ---------------------------------------------------------

    @rule(
        slot=st.integers(0, 1),
        kind=st.sampled_from([*KINDS, *range(len(HOSTILE_SPECS))]),
        flow_one=st.booleans(),
    )
    def compile_model(self, slot: int, kind: str | int, flow_one: bool) -> None:
        """A whitelisted model (flow I, layer by layer, or flow II), or a raw spec the
        client would refuse to build: refused as plainly."""
        actor = self.actors[slot]
        if isinstance(kind, int):
            with self._raw(slot, actor) as raw:
                answer = raw.post("/models", json={"spec": HOSTILE_SPECS[kind]})
            assert answer.status_code in (401, 422), answer.text
            return
        if actor.client is None:
            return
        held = len(actor.models)
        model = _spec(kind)
        if flow_one:
            draft, refused = _attempt(nn.Model, to=actor.client)
            if refused is not None:
                self._refused(actor, refused, "max_drafts", actor.drafts)
                return
            assert actor.drafts < self.limits["max_drafts"], (actor.drafts, self.limits)
            actor.drafts += 1
            for layer in model.layers:
                draft.add(layer)
            pointer, refused = _attempt(draft.compile, to=actor.client)
        else:
            pointer, refused = _attempt(model.compile, to=actor.client)
        if refused is not None:  # a whitelisted model is refused only past max_models
            self._refused(actor, refused, "max_models", held)
            return
        assert held < self.limits["max_models"], (held, self.limits)
        actor.drafts -= flow_one
        actor.models[pointer.id] = kind

    def _refused(
        self, actor: _Actor, refused: veil.VeilError, quota: str, held: int, needs: int = 1
    ) -> None:
        """A create refused for `quota`: only past the limit, counted from the user's own
        `held`, and nothing of it kept (the user's models and drafts as they were)."""
        assert isinstance(refused, veil.QuotaExceeded), refused
        assert refused.detail["quota"] == quota, refused.detail
        assert refused.detail["current"] == held, (refused.detail, held)
        assert held + needs > self.limits[quota], (held, self.limits)
        assert {m.id for m in actor.client.models.list()} == set(actor.models)
        self._each_holds_what_it_kept()

    @rule(
        slot=st.integers(0, 1),
        which=st.integers(0, 50),
        dataset=st.sampled_from(["A", "P"]),
        start=st.integers(0, ROWS + 2),
        length=st.sampled_from([1, 1, 2, 8, 40]),
        labels=st.booleans(),
        validation_split=st.sampled_from([0.0, 0.0, 0.5, 0.99]),
        stored=st.booleans(),
        publish=st.sampled_from([None, "loss", "predictions"]),
    )
    def step(
        self,
        slot: int,
        which: int,
        dataset: str,
        start: int,
        length: int,
        labels: bool,
        validation_split: float,
        stored: bool,
        publish: str | None,
    ) -> None:
        """A step on a slice (one row, too), named in the request or stored as a view
        first; its loss or predictions published at once, or left for later."""
        working = self._working(slot, which, dataset)
        if working is None:
            return
        actor, model_id, model, (x, y, k) = working
        target = k if labels else y
        stop = min(start + length, len(x))
        if start >= stop:
            with pytest.raises(veil.OutOfRange):
                x[start:stop]
            return
        x_rows = x[start:stop]
        if stored:
            actor.views.append(x_rows.id)
        held = len(actor.objects)
        out, refused = _attempt(
            model.step, x_rows, target[start:stop], validation_split=validation_split
        )
        if isinstance(refused, veil.QuotaExceeded):
            self._refused(actor, refused, "max_objects", held, needs=2)
        if out is None:
            return
        assert held + 2 <= self.limits["max_objects"], (held, self.limits)
        actor.objects.update((pointer.id, model_id) for pointer in out)
        if publish is not None:
            pointer = out[0] if publish == "loss" else out[1]
            clip = 5.0 if actor.models[model_id] == "linear" else None
            self._release(actor, _typed(pointer.publish, sigma=2.0, clip=clip))

    @rule(
        slot=st.integers(0, 1),
        which=st.integers(0, 50),
        dataset=st.sampled_from(["A", "P"]),
        labels=st.booleans(),
        batch_size=st.sampled_from([1, 8, 32]),
        validation_split=st.sampled_from([0.0, 0.25]),
        target_epsilon=st.sampled_from([None, None, 1.0, 1e-6]),
        wait=st.booleans(),
    )
    def fit(
        self,
        slot: int,
        which: int,
        dataset: str,
        labels: bool,
        batch_size: int,
        validation_split: float,
        target_epsilon: float | None,
        wait: bool,
    ) -> None:
        """One epoch of a fit, waited for or left running under the rules that follow."""
        working = self._working(slot, which, dataset)
        if working is None:
            return
        actor, model_id, model, (x, y, k) = working
        plan = dict(
            max_iter=1,
            batch_size=batch_size,
            validation_split=validation_split,
            target_epsilon=target_epsilon,
        )
        job, refused = _attempt(model.fit, x, k if labels else y, **plan, wait=False)
        if isinstance(refused, veil.QuotaExceeded):
            assert refused.detail["quota"] == "max_active_jobs", refused.detail
            assert refused.detail["current"] >= self.limits["max_active_jobs"], refused.detail
            with self.node.ctx.db.session() as session:  # nothing queued: still idle
                assert session.get(ModelRow, model_id).busy_job_id is None
        if job is not None and wait:
            for _ in range(60):
                state = _typed(model.progress, wait=2)
                if state is None or state["status"] not in ("queued", "running"):
                    return
            raise AssertionError(f"the job never ended: {state}")

    @rule(
        slot=st.integers(0, 1),
        which=st.integers(0, 50),
        dataset=st.sampled_from(["A", "P"]),
        start=st.integers(0, 20),
        length=st.sampled_from([1, 4, 12]),
        labels=st.booleans(),
        epsilon=st.sampled_from([0.5, 0.5, 1e-9, 1e6]),
    )
    def evaluate(
        self,
        slot: int,
        which: int,
        dataset: str,
        start: int,
        length: int,
        labels: bool,
        epsilon: float,
    ) -> None:
        working = self._working(slot, which, dataset)
        if working is None:
            return
        actor, model_id, model, (x, y, k) = working
        rows = slice(start, start + length)
        answer = _typed(model.evaluate, x[rows], (k if labels else y)[rows], epsilon=epsilon)
        if answer is not None:
            actor.releases.add(answer["release_id"])

    @rule(
        slot=st.integers(0, 1),
        which=st.integers(0, 50),
        wait=st.sampled_from([0, 0, 0.3, 2]),
        cancel=st.booleans(),
    )
    def progress(self, slot: int, which: int, wait: float, cancel: bool) -> None:
        """A poll (a long one too) showing public fields only, or a cancel."""
        actor = self.actors[slot]
        if actor.client is None or not actor.models:
            return
        model = self._model(actor, _pick(actor.models, which))
        if model is None:
            return
        if cancel:
            _typed(model.cancel)
            return
        state = _typed(model.progress, wait=wait)
        if state is None:
            return
        assert set(state) <= PUBLIC_PROGRESS, set(state) - PUBLIC_PROGRESS
        if state["error"] is not None:
            assert state["status"] == "failed", state
            assert state["error"].split(":", 1)[0] in _TYPED, state["error"]

    @rule(
        slot=st.integers(0, 1),
        which=st.integers(0, 50),
        what=st.sampled_from(
            [
                "weights",
                "weights",
                {"sigma": 1.0},
                {"epsilon": 0.5},
                {"sigma": 1.0, "clip": 1e6},
                {"epsilon": 1e-12},
            ]
        ),
    )
    def publish(self, slot: int, which: int, what: str | dict) -> None:
        """A model's weights, or a step's object (raw: any noise, any clip)."""
        actor = self.actors[slot]
        if actor.client is None:
            return
        if what == "weights":
            model = actor.models and self._model(actor, _pick(actor.models, which))
            if model:
                published = self._release(actor, _typed(model.weights().publish))
                if published is not None:
                    assert set(published.get()) and published.cost >= 0
            return
        if actor.objects or actor.gone_objects:
            object_id = _pick([*actor.objects, *sorted(actor.gone_objects)], which)
            with self._raw(slot, actor) as raw:
                answer = raw.post(f"/objects/{object_id}/publish", json=what)
            if object_id in actor.gone_objects:  # deleted: NotFound, nothing spent
                assert answer.status_code in (401, 404), answer.text
            if answer.status_code == 201:
                actor.releases.add(answer.json()["id"])

    def _release(self, actor: _Actor, published: veil.Published | None) -> veil.Published | None:
        if published is not None:
            actor.releases.add(published.id)
        return published

    @rule(slot=st.integers(0, 1), what=st.integers(0, 50))
    def trespass(self, slot: int, what: int) -> None:
        """The other data scientist's model, job, objects, views and releases: NotFound,
        for reads, writes, and as the rows of one's own step."""
        actor, victim = self.actors[slot], self.actors[1 - slot]
        if actor.client is None:
            return
        loot = [
            *(("model", m) for m in victim.models),
            *(("object", o) for o in victim.objects),
            *(("view", v) for v in victim.views),
            *(("release", r) for r in victim.releases),
        ]
        if not loot:
            return
        kind, target = _pick(loot, what)
        calls = {
            "model": [
                ("GET", f"/models/{target}", None),
                ("GET", f"/models/{target}/progress?wait=0.2", None),
                ("POST", f"/models/{target}/cancel", None),
                ("POST", f"/models/{target}/weights/publish", None),
                ("POST", f"/models/{target}/quote", {"x": "a", "y": "b"}),
                ("DELETE", f"/models/{target}/objects", None),
                ("DELETE", f"/models/{target}", None),
            ],
            "object": [
                ("POST", f"/objects/{target}/publish", {"sigma": 1.0}),
                ("DELETE", f"/objects/{target}", None),
            ],
            "view": [
                ("GET", f"/assets/{target}", None),
                ("GET", f"/assets/{target}/mock", None),
                ("POST", f"/assets/{target}/slice", {"start": 0, "stop": 1}),
                ("POST", f"/assets/{target}/statistics", {"sigma": 5.0}),
            ],
            "release": [
                ("GET", f"/releases/{target}", None),
                ("GET", f"/releases/{target}/result", None),
            ],
        }[kind]
        pointers = self._pointers(actor, "A")
        if kind == "view" and pointers is not None and actor.models:
            body = {"x": target, "y": pointers[1].id}
            calls.append(("POST", f"/models/{_pick(actor.models, what)}/step", body))
        with self._raw(slot, actor) as raw:
            for method, path, body in calls:
                answer = raw.request(method, path, json=body)
                assert answer.status_code in (401, 404), (method, path, answer.text)
                assert victim.email not in answer.text, answer.text
        # Nothing of the victim's went: its model still answers it, its objects stay.
        if kind in ("model", "object") and victim.client is not None:
            model_id = target if kind == "model" else victim.objects[target]
            assert self._model(victim, model_id) is not None, model_id
        self._each_holds_what_it_kept()

    @rule(slot=st.integers(0, 1), hostile=st.integers(0, 7), which=st.integers(0, 50))
    def send_what_the_client_would_not(self, slot: int, hostile: int, which: int) -> None:
        """Bodies the client refuses to send: typed refusals, never a 5xx."""
        actor = self.actors[slot]
        pointers = actor.client and actor.models and self._pointers(actor, "A")
        if not pointers:
            return
        x, y = pointers[0].asset_id, pointers[1].asset_id
        both = lambda **rows: {"x_rows": rows, "y_rows": rows}  # noqa: E731
        path, body = [
            ("/step", {"x": x, "y": y, **both(start=0, stop=3, step=0)}),
            ("/step", {"x": x, "y": y, **both(start=ROWS, stop=2**62)}),
            ("/step", {"x": x, "y": y, **both(start=-(2**62), stop=-(2**61))}),
            ("/step", {"x": x, "y": y, "batch_size": 1}),
            ("/fit", {"x": x, "y": y, "batch_size": 0}),
            ("/fit", {"x": x, "y": y, "max_iter": 2**70}),
            ("/evaluate", {"x": x, "y": y, "epsilon": -1}),
            ("/progress?wait=1e9", None),
        ][hostile]
        model_id = _pick(actor.models, which)
        with self._raw(slot, actor) as raw:
            if body is None:
                answer = raw.get(f"/models/{model_id}{path}")
            else:
                answer = raw.post(f"/models/{model_id}{path}", json=body)
        assert answer.status_code in (404, 409, 413, 422), (path, body, answer.text)

    @rule(slot=st.integers(0, 1), which=st.integers(0, 50), train_first=st.booleans())
    def delete_model(self, slot: int, which: int, train_first: bool) -> None:
        """One's own model deleted (a fit just queued on it first, or not): refused with
        Conflict while it trains, else gone with its objects (NotFound to every use and
        to a second delete); its releases stay in the ledger, paid."""
        actor = self.actors[slot]
        if actor.client is None or not actor.models:
            return
        model_id = _pick(actor.models, which)
        model, pointers = self._model(actor, model_id), self._pointers(actor, "A")
        if model is None:
            return
        if train_first and pointers is not None:
            _typed(model.fit, pointers[0], pointers[1], max_iter=1, batch_size=8, wait=False)
        before = {r.id for r in self.admin.ledger.releases(actor.email)}
        _, refused = _attempt(model.delete)
        if refused is not None:
            assert type(refused) is veil.Conflict and refused.detail["job_id"], refused
            assert self._model(actor, model_id) is not None, model_id
            return
        del actor.models[model_id]
        self._forget_objects(actor, [o for o, m in actor.objects.items() if m == model_id])
        for use in (model.delete, model.delete_objects, model.progress, model.cancel):
            with pytest.raises(veil.NotFound):
                use()
        if pointers is not None:
            with pytest.raises(veil.NotFound):
                model.step(pointers[0][0:2], pointers[1][0:2])
        with pytest.raises(veil.NotFound):
            actor.client.models.get(model_id)
        after = {r.id for r in self.admin.ledger.releases(actor.email)}
        assert before <= after, before - after
        assert before <= {r.id for r in actor.client.releases}

    def _forget_objects(self, actor: _Actor, object_ids: list[str]) -> None:
        """Objects deleted: gone from the node, NotFound to publish and to delete again."""
        for object_id in object_ids:
            del actor.objects[object_id]
            actor.gone_objects.add(object_id)
        if object_ids:
            gone = veil.PrivatePointer(actor.client._http, object_ids[0], "loss", ())
            with pytest.raises(veil.NotFound):
                gone.publish(sigma=1.0)
            with pytest.raises(veil.NotFound):
                gone.delete()

    @rule(slot=st.integers(0, 1), which=st.integers(0, 50), one=st.booleans())
    def delete_objects(self, slot: int, which: int, one: bool) -> None:
        """One of one's objects deleted, or all of one model's: exactly those go."""
        actor = self.actors[slot]
        if actor.client is None:
            return
        if one:
            if not actor.objects:
                return
            object_id = _pick(actor.objects, which)
            veil.PrivatePointer(actor.client._http, object_id, "loss", ()).delete()
            self._forget_objects(actor, [object_id])
            return
        model = actor.models and self._model(actor, _pick(actor.models, which))
        if not model:
            return
        mine = [o for o, m in actor.objects.items() if m == model.id]
        assert model.delete_objects() == len(mine), mine
        self._forget_objects(actor, mine)
        assert model.delete_objects() == 0

    @rule(slot=st.integers(0, 1), drafts=st.integers(0, 2))
    def discard_drafts(self, slot: int, drafts: int) -> None:
        """Drafts left uncompiled (within max_drafts), then discarded: exactly the
        uncompiled ones go; a compiled draft's model stays."""
        actor = self.actors[slot]
        if actor.client is None:
            return
        for n in range(drafts):
            draft, refused = _attempt(nn.Model, to=actor.client)
            if refused is not None:
                self._refused(actor, refused, "max_drafts", actor.drafts)
                break
            actor.drafts += 1
            if n:
                draft.add(nn.Dense(1, activation="sigmoid", input_shape=(None, 4)))
        assert actor.client.models.discard_drafts() == actor.drafts
        actor.drafts = 0
        assert actor.client.models.discard_drafts() == 0

    @rule(slot=st.integers(0, 1), stay_out=st.booleans())
    def logout_login(self, slot: int, stay_out: bool) -> None:
        actor = self.actors[slot]
        if actor.client is not None:
            with self._raw(slot, actor) as raw:  # the token as it was before the logout
                actor.client.logout()
                assert raw.get("/budget").status_code == 401
            actor.client.close()
            actor.client = None
        if not stay_out:
            actor.client = self._login(f"ds{slot}", actor.email, DS_PASSWORD)

    # Rules: the admin -------------------------------------------------------------------

    @rule(
        slot=st.integers(0, 1),
        move=st.sampled_from([0.0, 0.5, 3.0, 20.0, 1e4, "disable", "A", "P"]),
        seed=st.integers(0, 3),
    )
    def admin(self, slot: int, move: float | str, seed: int) -> None:
        """A budget moved; an account disabled for good (a fresh one takes its place); a
        dataset deleted (refused while models or releases refer to it) or uploaded again."""
        actor = self.actors[slot]
        if move in self.datasets:
            if not self.datasets[move]:
                _upload(self.admin, move, seed)
                self.datasets[move] = True
            else:  # refused (Conflict) while models or releases refer to it
                _typed(self.admin.datasets.delete, move)
                self.datasets[move] = move in self.admin.datasets.names()
            return
        if move != "disable":
            self.admin.users.set_budget(actor.email, move)
            actor.budget = move
            actor.budget_ceiling = max(actor.budget_ceiling, move)
            return
        self.admin.users.disable(actor.email)
        if actor.client is not None:
            with pytest.raises(veil.AuthenticationError):
                actor.client.users.me()
            actor.client.close()
            actor.client = None
        with pytest.raises(veil.AuthenticationError):
            self._login(f"ds{slot}", actor.email, DS_PASSWORD)
        self.retired.append(actor)
        self._releases_add_up_within_budget([actor])
        self.actors[slot] = self._new_actor(slot)

    @rule(
        slot=st.integers(0, 1),
        quota=st.sampled_from(["max_active_jobs", "max_models", "max_objects", "max_drafts", None]),
        which=st.integers(0, 50),
    )
    def quotas(self, slot: int, quota: str | None, which: int) -> None:
        """A per-user limit lowered to what one data scientist holds (both are bound by
        it, each counted from its own), or all put back; when lowered, that one's next
        create of the kind is tried at once and must be refused, keeping nothing."""
        actor = self.actors[slot]
        if quota is None:
            self.admin.update_node(**LIMITS)
            self.limits = dict(LIMITS)
            return
        held = {
            "max_models": len(actor.models),
            "max_drafts": actor.drafts,
            "max_objects": len(actor.objects),
            "max_active_jobs": 1,
        }[quota]
        value = max(held, 2 if quota == "max_objects" else 1)
        assert self.admin.update_node(**{quota: value})[quota] == value
        self.limits[quota] = value
        if actor.client is None:
            return
        if quota == "max_models":
            self.compile_model(slot, "sigmoid", flow_one=False)
        elif quota == "max_drafts":
            if actor.drafts < value:  # up to the limit: kept
                assert _attempt(nn.Model, to=actor.client)[1] is None
                actor.drafts += 1
            self.compile_model(slot, "sigmoid", flow_one=True)
        elif quota == "max_objects":
            self.step(slot, which, "A", 0, 2, False, 0.0, False, None)
        else:  # a long fit (one-row batches), then another model's, refused while it runs
            if len(actor.models) < 2:
                self.compile_model(slot, "sigmoid", flow_one=False)
            self.fit(slot, which, "A", False, 1, 0.0, None, False)
            self.fit(slot, which + 1, "A", False, 8, 0.0, None, False)

    # The oracle -------------------------------------------------------------------------

    @invariant()
    def oracle(self) -> None:
        self._answers_are_typed_and_keep_private_values()
        self._releases_add_up_within_budget(self.actors)
        self._each_data_scientist_lists_only_its_own()
        self._each_holds_what_it_kept()

    def _each_holds_what_it_kept(self) -> None:
        """On the node, each data scientist holds the models, private objects and
        uncompiled drafts it made and kept, no more, and its usage row counts exactly its
        objects: a refused create left no row, a delete freed what it took."""
        with self.node.ctx.db.session() as session:
            for actor in self.actors:
                user_id = session.scalar(select(UserRow.id).where(UserRow.email == actor.email))
                mine = (ModelRow.owner_id == user_id,)
                assert set(session.scalars(select(ModelRow.id).where(*mine))) == set(actor.models)
                objects = select(PrivateObjectRow.id).where(PrivateObjectRow.owner_id == user_id)
                assert set(session.scalars(objects)) == set(actor.objects)
                usage = session.get(UsageRow, user_id)
                assert (usage.objects if usage else 0) == len(actor.objects), usage
                drafts = select(func.count()).where(
                    DraftRow.owner_id == user_id, DraftRow.compiled_model_id.is_(None)
                )
                assert session.scalar(drafts) == actor.drafts

    def _answers_are_typed_and_keep_private_values(self) -> None:
        for answer in self.answers[self.checked :]:
            where = f"{answer.who} {answer.method} {answer.path} -> {answer.status}"
            assert answer.status < 500, f"{where}: {answer.body[:500]!r}"
            for mark in _MARK_TEXT:
                assert mark not in answer.body, f"{where}: {answer.body[:500]!r}"
            if answer.status >= 400:
                body = json.loads(answer.body)
                assert body["error"] in _TYPED, f"{where}: {body}"
                assert len(body["message"]) > 10 and "Internal error" not in body["message"], body
        self.checked = len(self.answers)

    def _releases_add_up_within_budget(self, actors: list[_Actor]) -> None:
        """Each account's ledger line against its release log, and each new release
        within the most its budget was since the last check."""
        for _ in range(50):  # a fit's validation may release between two reads
            logs = {a.email: self.admin.ledger.releases(a.email) for a in actors}
            ledger = self.admin.ledger
            again = {a.email: [r.id for r in ledger.releases(a.email)] for a in actors}
            if again == {email: [r.id for r in log] for email, log in logs.items()}:
                break
        for actor in actors:
            entry, releases = ledger.entry(actor.email), logs[actor.email]
            assert entry.releases == len(releases)
            costs = sum(r.cost for r in releases)
            assert math.isclose(costs, entry.spent, rel_tol=1e-6, abs_tol=1e-9), (costs, entry)
            if releases:
                assert math.isclose(releases[-1].spent_after, entry.spent, rel_tol=1e-9)
            ceiling = actor.budget_ceiling * (1 + 1e-9) + 1e-9
            for release in releases:
                if release.id not in actor.vetted:
                    assert release.spent_after <= ceiling, (release, actor.budget_ceiling)
            # Releases the node made itself (a fit's validation) are the user's too.
            actor.vetted = {r.id for r in releases}
            actor.releases |= actor.vetted
            actor.budget_ceiling = actor.budget

    def _each_data_scientist_lists_only_its_own(self) -> None:
        for actor in self.actors:
            if actor.client is None:
                continue
            models = {m.id for m in actor.client.models.list()}
            assert models == set(actor.models), (models, set(actor.models))
            mine = {r.id for r in actor.client.releases}
            if not mine <= actor.releases:  # a fit's validation, released since: its own?
                theirs = {r.id for r in self.admin.ledger.releases(actor.email)}
                assert mine <= theirs, (mine, theirs)
            assert actor.releases <= mine, (actor.releases, mine)

    def _settle(self) -> None:
        """Every job ends, no model stays held, and a failed job failed plainly."""
        db = self.node.ctx.db
        deadline = time.monotonic() + 60
        while True:
            with db.session() as session:
                jobs = list(session.scalars(select(JobRow)))
                busy = select(ModelRow.id).where(ModelRow.busy_job_id.is_not(None))
                held = list(session.scalars(busy))
            active = [j for j in jobs if j.status not in _ENDED]
            if not active and not held:
                break
            assert time.monotonic() < deadline, (active, held)
            time.sleep(0.05)
        for job in jobs:
            if job.status == "failed":
                assert job.error.split(":", 1)[0] in _TYPED, job.error
            assert job.error is None or all(m.decode() not in job.error for m in _MARK_TEXT)
        self._releases_add_up_within_budget([*self.actors, *self.retired])
        self._answers_are_typed_and_keep_private_values()


def test_two_data_scientists_and_the_admin_in_any_order(tmp_path) -> None:
    with running_node(tmp_path / "node") as node:
        run_state_machine_as_test(
            lambda: NodeMachine(node),
            settings=settings(
                max_examples=8,
                stateful_step_count=20,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.generate, Phase.shrink],
            ),
        )
