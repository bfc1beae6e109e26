"""Red-team round three: WORK that depends on private values, the code-level cause of
timing channels, counted rather than timed. Each test runs the DS's calls against a
real node with the public client (or raw HTTP) while engine or service functions are
wrapped to record the sizes of what they process; two slices or datasets with the same
public facts but different private contents must give the same record. Also: inputs
that once answered HTTP 500. Every test is an attack the node must resist."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import veil
from tests.attacks.scenario import VISITS_PEOPLE, raw_client, upload_people
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.nodes import running_node
from veil import nn

ROWS = 24
_ENDED = ("done", "failed", "cancelled")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One SQLite node with two subject datasets of the same public facts (24 rows, 9
    people): in "Visits" rows 0-7 are person 0 and rows 8-15, 16-23 persons 1..8; in
    "Visits2" the same 24 rows are spread over the 9 people."""
    with running_node(tmp_path_factory.mktemp("redteam-work") / "node") as node:
        admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
        rng = np.random.default_rng(0)
        people = {
            "Visits": VISITS_PEOPLE,
            "Visits2": np.arange(ROWS) % 9,  # the same 24 rows and 9 people, spread out
        }
        for name, person in people.items():
            upload_people(admin, name, person, rng)
        yield node, admin
        admin.close()


def _tabular(ds: veil.Client):
    model = nn.Model()
    model.add(nn.Dense(4, activation="relu", input_shape=(None, 4)))
    model.add(nn.Dense(1, activation="sigmoid"))
    return model.compile(to=ds, loss=nn.BinaryCrossEntropy())


def _until_ended(model_ptr) -> dict:
    state = model_ptr.progress(wait=10)
    deadline = time.monotonic() + 120
    while state["status"] not in _ENDED and time.monotonic() < deadline:
        state = model_ptr.progress(wait=10)
    return state


def _slices(data, start: int):
    return data["x"][start : start + 8], data["y"][start : start + 8]


# Attacks the node resists ------------------------------------------------------------


def test_a_subject_steps_validation_and_evaluate_work_is_public(shared, monkeypatch) -> None:
    """Rows 0:8 are one person's, rows 8:16 eight people's: a step with held-out rows
    and an evaluation clip, evaluate and predict the same number of rows on both."""
    import veil.engine._trainer as trainer

    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Visits"]
    seen: list[tuple[str, int]] = []
    clip, evaluate = trainer.clip_and_sum, trainer.DPTrainer._evaluate
    predict = trainer.DPTrainer.predict

    def clipping(grads, max_grad_norm, valid=None):
        seen.append(("clip", int(next(iter(grads.values())).shape[0])))
        return clip(grads, max_grad_norm, valid)

    def evaluating(self, x, y, rows):
        seen.append(("evaluate", len(rows)))
        return evaluate(self, x, y, rows)

    def predicting(self, x, batch_size=1024):
        seen.append(("predict", int(x.shape[0])))
        return predict(self, x, batch_size)

    monkeypatch.setattr(trainer, "clip_and_sum", clipping)
    monkeypatch.setattr(trainer.DPTrainer, "_evaluate", evaluating)
    monkeypatch.setattr(trainer.DPTrainer, "predict", predicting)
    work = []
    for start in (0, 8):
        seen.clear()
        model_ptr = _tabular(ds)
        x, y = _slices(data, start)
        loss, preds = model_ptr.step(x, y, validation_split=0.25)
        loss.publish(sigma=1.0)
        preds.publish(sigma=1.0)
        model_ptr.evaluate(x, y, epsilon=1.0)
        work.append(list(seen))
    assert work[0] == work[1], work
    assert ("evaluate", 2) in work[0] and ("evaluate", 8) in work[0]


def test_whole_asset_statistics_by_subject_work_on_public_sizes(shared, monkeypatch) -> None:
    """`statistics` over a whole subject-level asset averages one vector per person
    (9 of them on both datasets), with no grouping of private ranks left to do."""
    from veil.server.services import statistics

    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    original, queries = statistics._moments_query, []

    def recording(pointer, units, moments, channels):
        query = original(pointer, units, moments, channels)
        queries.append((query.values.shape, query.groups is None, moments.shape))
        return query

    monkeypatch.setattr(statistics, "_moments_query", recording)
    for name in ("Visits", "Visits2"):
        ds.datasets[name]["x"].statistics(epsilon=1.0)
    assert queries[0] == queries[1] == ((9, 8), True, (24, 8))


def test_a_subject_fit_without_rows_per_subject_reports_alike(shared) -> None:
    """Without rows_per_subject a fit's work follows the rows its people own (README);
    nothing else differs: slice 0:8 holds one training person and no held-out row,
    slice 16:24 four training people and four held-out ones."""
    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Visits"]
    outcomes = set()
    for start in (0, 16):
        model_ptr = _tabular(ds)
        x, y = _slices(data, start)
        final = model_ptr.fit(x, y, max_iter=2, batch_size=2, validation_split=0.5, wait=True)
        metrics = tuple(tuple(sorted(k for k in m if k[:4] != "val_")) for m in final["metrics"])
        assert all(np.isfinite(m["val_loss"]) for m in final["metrics"])
        outcomes.add((final["status"], final["error"], final["step"], final["unit"], metrics))
    assert len(outcomes) == 1 and next(iter(outcomes))[0] == "done"


def test_every_thread_that_computes_on_private_data_flushes_denormals(shared, monkeypatch) -> None:
    """A subnormal float costs a microcode assist (up to ~100x slower): the request
    thread of `statistics`, the compute pool of `step` and the fit job's thread all
    flush them, so no private value makes a release or a step slower."""
    import veil.engine._trainer as trainer
    from veil.server.services import statistics

    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Visits"]
    probes: dict[str, float] = {}

    def probe(where: str) -> None:
        tiny = float((np.full(4, 1e-310) * 1.0)[0])  # 0.0 where denormals are flushed
        probes[f"{where}@{threading.current_thread().name}"] = tiny

    moments, update = statistics._row_moments, trainer.DPTrainer._update
    monkeypatch.setattr(
        statistics, "_row_moments", lambda *a: (probe("statistics"), moments(*a))[1]
    )
    monkeypatch.setattr(
        trainer.DPTrainer,
        "_update",
        lambda self, *a, **k: (probe("update"), update(self, *a, **k))[1],
    )
    data["x"][0:8].statistics(epsilon=1.0)
    model_ptr = _tabular(ds)
    model_ptr.step(*_slices(data, 0))
    model_ptr.fit(data["x"], data["y"], max_iter=1, batch_size=4, wait=True)
    assert len({k.split("@")[1] for k in probes}) >= 3, probes  # three kinds of thread
    assert all(v == 0.0 for v in probes.values()), probes


@pytest.mark.postgres
def test_odd_json_that_parses_is_refused_plainly_on_postgresql(tmp_path) -> None:
    """Duplicate keys, a BOM, lone surrogates, integers past 2^64 and floats under the
    normal range, on the database that refuses what SQLite stores."""
    with running_node(tmp_path / "node", backend="postgres") as node:
        admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
        admin.datasets.upload(
            name="Rows",
            assets={"x": np.zeros((8, 4), np.float32), "y": np.zeros(8, np.int64)},
            bounds={"x": (-1, 1), "y": (0, 1)},
        )
        ds = make_ds(admin, node, budget=1e6)
        x, y = ds.datasets["Rows"]["x"].id, ds.datasets["Rows"]["y"].id
        model_ptr = _tabular(ds)
        raw = raw_client(node, ds)
        step, big = f"/models/{model_ptr.id}/step", 2**64
        bodies = [
            (step, f'{{"x": "{y}", "x": "{x}", "y": "{y}"}}'),
            (step, f'\ufeff{{"x": "{x}", "y": "{y}"}}'),
            (step, f'{{"x": "\\ud800", "y": "{y}"}}'),
            (step, f'{{"x": "{x}", "y": "{y}", "x_rows": {{"start": {big}}}}}'),
            (step, f'{{"x": "{x}", "y": "{y}", "batch_size": {big}}}'),
            (step, f'{{"x": "{x}", "y": "{y}", "validation_split": 1e-320}}'),
            (f"/assets/{x}/slice", f'{{"start": -{big}, "stop": {big}, "step": {big}}}'),
            (f"/models/{model_ptr.id}/quote", f'{{"x": "{x}", "y": "{y}", "max_iter": {big}}}'),
            ("/models", '{"spec": {"\\ud800": 1}}'),
        ]
        nested = "[" * 900 + "]" * 900  # typed fields: pydantic refuses it unwalked
        bodies += [(step, f'{{"x": {nested}, "y": "{y}"}}'), (step, f'{{"x_rows": {nested}}}')]
        bodies += [("/auth/login", f'{{"email": {nested}, "password": "x"}}')]
        for path, body in bodies:
            answer = raw.post(path, content=body, headers={"content-type": "application/json"})
            assert answer.status_code < 500, (path, body[:80], answer.text[:200])
        for path in ("/models/%ED%A0%80", "/assets/%C0%80", "/releases/%FF/result"):
            assert raw.get(path).status_code == 404
        assert raw.get(f"/models/{model_ptr.id}/progress?wait=1e-320").status_code == 200
        admin.close()


# Defects ---------------------------------------------------------------------------


def test_grouped_releases_work_on_as_many_rows_as_the_rows_hold_people(shared, monkeypatch) -> None:
    """Measured on 100k rows of 2 x 32 moments: a slice's statistics release took 0.16 s
    when one person owns every row, 0.27 s when each row is its own person."""
    from veil.privacy import bounding

    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Visits"]
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for cls in (bounding.MeanOf, bounding.MeanOfRows):

        def recording(self, bounded, groups, _original=cls.group):
            out = _original(self, bounded, groups)
            shapes.append((type(self).__name__, out.shape))
            return out

        monkeypatch.setattr(cls, "group", recording)
    work = []
    for start in (0, 8):  # one person's 8 rows, then eight people's
        shapes.clear()
        x, y = _slices(data, start)
        x.statistics(epsilon=1.0)
        model_ptr = _tabular(ds)
        loss, _ = model_ptr.step(x, y)
        loss.publish(sigma=1.0)
        model_ptr.evaluate(x, y, epsilon=1.0)
        work.append(list(shapes))
    assert work[0] == work[1], work


def test_rows_per_subject_steps_do_not_read_every_row_a_person_owns(shared, monkeypatch) -> None:
    """batch_size 5 of 5 training people (q = 1): one step on all of them, then
    validation on the 4 held-out ones. Slice 0:8: person 0 (8 rows) trains, no held-out
    row; slice 8:16: four people of one row train, four hold one row out. On a
    1M-row dataset, gathering a person of 999,901 rows took 0.2 s, one of 1 row 0.07 ms."""
    from veil.engine._subjects import SubjectIndex

    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Visits"]
    drawn: list[int] = []
    original = SubjectIndex.gather

    def counting(self, chosen, *, rows_per_subject, uniform):
        def draws(count):
            drawn.append(int(count))
            return uniform(count)

        return original(self, chosen, rows_per_subject=rows_per_subject, uniform=draws)

    monkeypatch.setattr(SubjectIndex, "gather", counting)
    work = []
    for start in (0, 8):
        drawn.clear()
        model_ptr = _tabular(ds)
        x, y = _slices(data, start)
        final = model_ptr.fit(
            x, y, max_iter=1, batch_size=5, validation_split=0.5, rows_per_subject=2, wait=True
        )
        assert final["status"] == "done" and final["step"] == 1
        work.append(list(drawn))
    assert work[0] == work[1], f"rows gathered per call: {work}"


def test_deeply_nested_json_is_refused_plainly(shared) -> None:
    node, admin = shared
    ds = make_ds(admin, node)
    raw = raw_client(node, ds)
    draft = raw.post("/models/drafts").json()["id"]
    nested = "[" * 600 + "]" * 600
    bodies = [
        ("/models", f'{{"spec": {{"format": 1, "layers": {nested}}}}}'),
        (f"/models/drafts/{draft}/layers", f'{{"layer": {{"config": {nested}}}}}'),
        (f"/models/drafts/{draft}/compile", f'{{"loss": {{"config": {nested}}}}}'),
    ]
    answers = [
        raw.post(path, content=body, headers={"content-type": "application/json"})
        for path, body in bodies
    ]
    assert all(400 <= a.status_code < 500 for a in answers), [a.text[:120] for a in answers]


def test_spec_integers_past_float_range_are_refused_plainly(shared) -> None:
    node, admin = shared
    ds = make_ds(admin, node)
    raw = raw_client(node, ds)
    big = "1" + "0" * 400
    dense = '{"class_name": "Dense", "config": {"units": 1, "activation": null}}'
    layers = [dense, f'{{"class_name": "Rescaling", "config": {{"scale": {big}, "offset": 0}}}}']
    layers += [f'{{"class_name": "Dropout", "config": {{"rate": {big}}}}}']
    codes = []
    for index, layer in enumerate(layers):
        sigma = big if index == 0 else "1"
        spec = f'"input_shape": [null, 4], "layers": [{layer}], "noise_multiplier": {sigma}'
        content = f'{{"spec": {{"format": 1, {spec}, "max_grad_norm": 1}}}}'
        answer = raw.post("/models", content=content, headers={"content-type": "application/json"})
        codes.append(answer.status_code)
    assert all(400 <= c < 500 for c in codes), codes
