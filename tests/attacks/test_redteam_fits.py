"""Red-team round two: what a data scientist can reach through `fit` (progress, long
polls, failures, quotes, validation, cancel), DP statistics, the dashboard, publishing
and the ledger. Each test is an attack run against a real node with the public client
(or raw HTTP with its token or cookie) that the node must resist."""

from __future__ import annotations

import hashlib
import time

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

import veil
from tests.attacks.scenario import VISITS_PEOPLE, raw_client, upload_people
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.nodes import running_node
from veil import nn

ROWS = 24
DIGITS = load_digits()
IMAGES = DIGITS.images.astype(np.uint8)[:ROWS, None]
LABELS = DIGITS.target[:ROWS].astype(np.uint8)  # 0..9, 0..9, 0..3
_ENDED = ("done", "failed", "cancelled")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One SQLite node: Digits (labels declared 0..9), the same rows with undeclared
    labels, and two subject datasets with the same public facts (24 rows, 9 people)
    but different private assignments of rows to people."""
    with running_node(tmp_path_factory.mktemp("redteam-fits") / "node") as node:
        admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
        admin.datasets.upload(
            name="Digits",
            assets={"images": IMAGES, "labels": LABELS},
            bounds={"images": (0, 16), "labels": (0, 9)},
        )
        admin.datasets.upload(
            name="Unbounded",
            assets={"images": IMAGES, "labels": LABELS},
            bounds={"images": (0, 16)},
        )
        rng = np.random.default_rng(0)
        people = {
            "Visits": VISITS_PEOPLE,
            "Visits2": np.arange(ROWS) % 9,  # the same 24 rows and 9 people, spread out
        }
        for name, person in people.items():
            upload_people(admin, name, person, rng)
        yield node, admin
        admin.close()


def _classifier(classes: int = 10) -> nn.Model:
    model = nn.Model()
    model.add(nn.Flatten(input_shape=(None, 1, 8, 8)))
    model.add(nn.Dense(classes, activation="softmax"))
    return model


def _tabular() -> nn.Model:
    model = nn.Model()
    model.add(nn.Dense(4, activation="relu", input_shape=(None, 4)))
    model.add(nn.Dense(1, activation="sigmoid"))
    return model


def _until_ended(model_ptr) -> dict:
    state = model_ptr.progress(wait=10)
    deadline = time.monotonic() + 120
    while state["status"] not in _ENDED and time.monotonic() < deadline:
        state = model_ptr.progress(wait=10)
    return state


def _outcome(final: dict) -> tuple:
    """What a data scientist sees of a fit, less its noised values."""
    metrics = tuple(tuple(sorted(m)) for m in final["metrics"])
    return final["status"], final["error"], final["step"], final["steps"], metrics


def _ledger_adds_up(ds: veil.Client) -> None:
    """Every release's cost is the growth of spent, and spent is their running total."""
    releases = list(ds.releases)
    spent = 0.0
    for release in releases:
        assert release.cost >= 0.0
        assert release.spent_after == pytest.approx(spent + release.cost, abs=1e-9)
        spent = release.spent_after
    assert ds.privacy_budget.spent == pytest.approx(spent, abs=1e-9)


# Attacks the node resists ------------------------------------------------------------


def test_a_fits_progress_shows_public_counts_and_charged_metrics_only(shared) -> None:
    node, admin = shared
    ds = make_ds(admin, node, budget=100)
    data = ds.datasets["Digits"]
    model_ptr = _classifier().compile(to=ds)
    final = model_ptr.fit(
        data["images"], data["labels"], max_iter=2, batch_size=6, validation_split=0.25, wait=True
    )
    assert final["status"] == "done" and final["error"] is None
    assert final["steps"] == final["step"] == final["total_steps"] == 2 * 3
    assert final["expected_samples"] == final["step"] * 6  # q x n_train, never the draw
    results = {r.id: r for r in ds.releases}
    assert len(final["metrics"]) == 2
    for entry in final["metrics"]:
        assert entry["released"] is True
        release = results[entry["release_id"]]
        assert release.kind == "metrics" and release.params["n_rows"] == 6
        values = ds._http.get(f"/releases/{release.id}/result")["values"]
        for name in ("val_loss", "val_accuracy"):
            # progress shows the released (noised, charged) value and nothing else
            assert entry[name] == values[name]["value"] and values[name]["std"] > 0
            assert entry[f"{name}_std"] == values[name]["std"]
        assert entry.get("withheld") is None
        assert set(entry) <= {"epoch", "released", "release_id", "withheld"} | {
            f"val_{m}{s}" for m in ("loss", "accuracy") for s in ("", "_std", "_clipped")
        }
    assert model_ptr.progress()["cart"] == pytest.approx(0.0, abs=1e-9)  # validation settled it
    _ledger_adds_up(ds)


def test_labels_outside_the_models_range_change_nothing_a_fit_shows(shared) -> None:
    """A 3-class model fitted on rows whose (undeclared) labels are 0, 1, 2, and on rows
    whose labels are 3, 4, 5: the same job, the same failure-free outcome."""
    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Unbounded"]
    assert set(LABELS[0:3]) == {0, 1, 2} and set(LABELS[3:6]) == {3, 4, 5}
    seen = set()
    for start in (0, 3):
        model_ptr = _classifier(3).compile(to=ds, loss=nn.CrossEntropy())
        x, y = data["images"][start : start + 3], data["labels"][start : start + 3]
        final = model_ptr.fit(x, y, max_iter=2, batch_size=2, validation_split=0.34, wait=True)
        metrics = final["metrics"]
        assert all(np.isfinite(m["val_loss"]) for m in metrics)
        seen.add((*_outcome(final), round(final["cart"], 12)))
    assert len(seen) == 1 and next(iter(seen))[0] == "done"


def test_quotes_and_refusals_read_public_facts_only(shared) -> None:
    """Two subject datasets with the same public facts but different rows per person:
    every quote and every refusal is the same on both."""
    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    answers = []
    for name in ("Visits", "Visits2"):
        data = ds.datasets[name]
        model_ptr = _tabular().compile(to=ds, loss=nn.BinaryCrossEntropy())
        raw = raw_client(node, ds)
        out = []
        for extra in (
            {"validation_split": 0.5, "rows_per_subject": 2},
            {"validation_split": 0.34, "target_epsilon": 0.7},
            {"rows_per_subject": 17},  # past the public cap
            {"rows_per_subject": 10**12},
            {"batch_size": 9, "validation_split": 0.2},  # past the training subjects
            {"validation_split": 0.95},
        ):
            for x, y in ((data["x"], data["y"]), (data["x"][0:8], data["y"][0:8])):
                body = {"x": x.id, "y": y.id, "max_iter": 2, "batch_size": 2, **extra}
                answer = raw.post(f"/models/{model_ptr.id}/quote", json=body)
                assert answer.status_code < 500, answer.text
                reply = answer.json()
                reply.pop("detail", None)
                out.append((answer.status_code, reply))
        answers.append(out)
    assert answers[0] == answers[1]


def test_a_subject_fit_on_any_slice_runs_and_reports_alike(shared) -> None:
    """Slice 0:8 holds one training person and no held-out one; slice 8:16 holds four of
    each. Public facts are the same (8 rows of a 9-person dataset): so is the outcome."""
    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Visits"]
    seen = set()
    for start in (0, 8):
        model_ptr = _tabular().compile(to=ds, loss=nn.BinaryCrossEntropy())
        x, y = data["x"][start : start + 8], data["y"][start : start + 8]
        final = model_ptr.fit(
            x, y, max_iter=1, batch_size=2, validation_split=0.5, rows_per_subject=2, wait=True
        )
        assert final["unit"] == "subject" and final["expected_samples"] == final["step"] * 2
        charged = [r.params.get("n_subjects") for r in ds.releases if r.model_id == model_ptr.id]
        seen.add((*_outcome(final), tuple(charged)))
    assert len(seen) == 1 and next(iter(seen))[0] == "done"


def test_publishing_twice_gives_one_draw_for_one_price_never_two(shared) -> None:
    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Digits"]
    model_ptr = _classifier().compile(to=ds)
    loss, preds = model_ptr.step(data["images"][0:4], data["labels"][0:4])
    cart = model_ptr.progress()["cart"]
    first = model_ptr.weights().publish()
    assert first.cost == pytest.approx(cart, rel=1e-9)
    again = model_ptr.weights().publish()
    assert again.cost == 0.0
    a, b = first.get(), again.get()
    assert all(np.array_equal(a[k], b[k]) for k in a)  # the same draw, not a fresh one
    # An object's second publish is a second draw: it is charged again.
    draws = [preds.publish(sigma=1.0, clip=0.5) for _ in range(2)]
    assert all(d.cost > 0 for d in draws)
    assert not np.array_equal(draws[0].get(), draws[1].get())
    losses = [loss.publish(sigma=1.0) for _ in range(2)]
    assert all(d.cost > 0 for d in losses)
    _ledger_adds_up(ds)


def test_statistics_are_charged_as_quoted_on_every_draw(shared) -> None:
    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    for name, asset in (("Digits", "images"), ("Visits", "x")):
        pointer = ds.datasets[name][asset]
        for view in (pointer, pointer[0:8]):
            quote = view.quote_statistics(epsilon=0.5)
            released = [view.statistics(epsilon=0.5) for _ in range(2)]
            assert released[0].cost == pytest.approx(quote["cost"], rel=1e-9)
            assert all(r.cost > 0 for r in released)
            moments = [
                ds._http.get(f"/releases/{r.id}/result")["values"]["moments"] for r in released
            ]
            assert moments[0]["value"] != moments[1]["value"]  # two draws, not one shown twice
            assert moments[0]["std"] > 0
    _ledger_adds_up(ds)


def test_a_cancelled_fit_charges_exactly_the_steps_it_trained(shared) -> None:
    node, admin = shared
    ds = make_ds(admin, node, budget=1e9)
    data = ds.datasets["Digits"]
    model_ptr = _classifier().compile(to=ds)
    full = model_ptr.quote(data["images"], data["labels"], max_iter=400, batch_size=24)
    model_ptr.fit(data["images"], data["labels"], max_iter=400, batch_size=24, wait=False)
    state = model_ptr.progress(wait=10)
    while state["status"] in ("queued", "running") and not state["step"]:
        state = model_ptr.progress(wait=10)
    model_ptr.cancel()
    final = _until_ended(model_ptr)
    assert final["status"] == "cancelled" and final["error"] is None
    assert 0 < final["step"] < final["steps"] == 400
    assert final["total_steps"] == final["step"]
    assert 0 < final["cart"] < full["cost"]
    published = model_ptr.weights().publish()
    assert published.cost == pytest.approx(final["cart"], rel=1e-9)
    assert published.params["steps"] == final["step"]
    _ledger_adds_up(ds)


def test_long_polls_end_at_once_when_nothing_runs_or_the_model_is_anothers(shared) -> None:
    node, admin = shared
    victim, attacker = make_ds(admin, node), make_ds(admin, node)
    model_ptr = _classifier().compile(to=victim)
    raw = raw_client(node, attacker)
    for model_id in (model_ptr.id, "no-such-model"):
        began = time.monotonic()
        answer = raw.get(f"/models/{model_id}/progress", params={"wait": 10})
        assert answer.status_code == 404 and time.monotonic() - began < 3
    began = time.monotonic()
    assert model_ptr.progress(wait=10)["status"] == "idle"
    assert time.monotonic() - began < 3


def test_the_dashboard_shows_a_data_scientist_nothing_of_others(shared) -> None:
    node, admin = shared
    victim, attacker = make_ds(admin, node, budget=100), make_ds(admin, node, budget=100)
    data = victim.datasets["Digits"]
    model_ptr = _classifier().compile(to=victim)
    job = model_ptr.fit(data["images"], data["labels"], max_iter=1, batch_size=6, wait=False)
    _until_ended(model_ptr)
    model_ptr.weights().publish()
    view = data["images"][0:8]
    victim_id = victim.users.me().id
    secrets = [victim.users.me().email, job["job_id"], *(r.id for r in victim.releases)]
    pages = httpx.Client(base_url=node.url, cookies={"veil_session": attacker._http.token})
    mine = _classifier().compile(to=attacker)
    images = attacker.datasets["Digits"]["images"]
    labels = attacker.datasets["Digits"]["labels"]
    paths = "/ /jobs /datasets /ledger /users /ledger?kind=%00&model=%00 /datasets/mock/%00.png"
    paths += " /ledger?since=9999-12-31&until=0001-01-01 /ledger?until=9999-12-30"
    paths += f" /ledger?user={victim_id} /ledger?model={model_ptr.id} /datasets/mock/{view.id}.png"
    paths += f" /ledger?model={mine.id}&kind=weights&since=2000-01-01&until=9999-12-31"
    paths += f" /datasets/mock/{images.id}.png /datasets/mock/{labels.id}.png"
    answers = {path: pages.get(path) for path in paths.split()}
    for path, answer in answers.items():
        assert answer.status_code < 500, (path, answer.text[:300])
        assert not [s for s in secrets if s in answer.text], path
    assert answers["/users"].status_code == 403
    assert answers[f"/ledger?user={victim_id}"].status_code == 403
    assert answers[f"/datasets/mock/{view.id}.png"].status_code == 404  # the victim's view
    assert answers[f"/datasets/mock/{images.id}.png"].headers["content-type"] == "image/png"
    csrf = hashlib.sha256(b"veil-dashboard-csrf:" + attacker._http.token.encode()).hexdigest()
    answer = pages.post(
        f"/jobs/{job['job_id']}/cancel", data={"csrf": csrf}, follow_redirects=False
    )
    assert answer.status_code == 303 and "veil_notice" in answer.cookies
    assert model_ptr.progress()["status"] == "done"


def test_odd_fit_and_quote_inputs_are_refused_plainly(shared) -> None:
    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    raw = raw_client(node, ds)
    digits, visits = ds.datasets["Digits"], ds.datasets["Visits"]
    model_ptr = _classifier().compile(to=ds)
    subject_ptr = _tabular().compile(to=ds, loss=nn.BinaryCrossEntropy())
    xy = {"x": digits["images"].id, "y": digits["labels"].id, "batch_size": 4}
    sxy = {"x": visits["x"].id, "y": visits["y"].id, "batch_size": 2}
    odd = {"target_epsilon": (1e-300, 1e300, "1"), "batch_size": (True,), "max_iter": (2**31 - 1,)}
    odd["validation_split"] = (0.9999999999, 5e-324)
    bodies = [(model_ptr, {**xy, k: v}) for k, values in odd.items() for v in values]
    bodies += [(subject_ptr, {**sxy, "rows_per_subject": v}) for v in (0, -1, 1.5, True, 2**80)]
    bodies += [(model_ptr, {**xy, "max_iter": 2**31, "batch_size": 1})]
    bodies += [(subject_ptr, {**sxy, "validation_split": 0.9, "batch_size": 1})]
    for target, body in bodies:
        for path in ("quote", "fit"):
            answer = raw.post(f"/models/{target.id}/{path}", json=body)
            assert answer.status_code < 500, (path, body, answer.text[:300])
            if answer.status_code == 202:
                _until_ended(target)
    for wait in ("5e-324", "0", "1e-9"):
        answer = raw.get(f"/models/{model_ptr.id}/progress", params={"wait": wait})
        assert answer.status_code == 200
    for body in ({"epsilon": 5e-324}, {"sigma": 5e-324}, {"epsilon": 1e300}, {"sigma": 1e300}):
        answer = raw.post(f"/assets/{digits['images'].id}/statistics/quote", json=body)
        assert 400 <= answer.status_code < 500, (body, answer.text[:200])
    assert raw.get(f"/models/{model_ptr.id}/progress").json()["status"] in _ENDED + ("idle",)


def test_spending_elsewhere_during_a_fit_never_passes_the_budget(shared) -> None:
    """The fit was affordable when queued; the budget is then spent on statistics while it
    trains: its later validation is withheld, its weights cannot be published, and
    nothing passes the budget."""
    node, admin = shared
    plan = {"max_iter": 20, "batch_size": 6, "validation_split": 0.25}
    probe = make_ds(admin, node)
    data = probe.datasets["Digits"]
    cart_after = _classifier().compile(to=probe).quote(data["images"], data["labels"], **plan)
    budget = cart_after["cart_after"] + 0.5
    ds = make_ds(admin, node, budget=budget)
    data = ds.datasets["Digits"]
    model_ptr = _classifier().compile(to=ds)
    model_ptr.fit(data["images"], data["labels"], wait=False, **plan)
    for _ in range(40):  # at once, while the fit is queued or training
        try:
            data["images"].statistics(epsilon=5.0)
        except veil.BudgetExceeded:
            break
    final = _until_ended(model_ptr)
    assert final["status"] == "done" and final["error"] is None
    withheld = [m for m in final["metrics"] if m["released"] is False]
    assert withheld and all(m.get("release_id") is None for m in withheld)
    assert all(set(m) == {"epoch", "released", "release_id", "withheld"} for m in withheld)
    with pytest.raises(veil.BudgetExceeded):
        model_ptr.weights().publish()
    assert ds.privacy_budget.spent <= budget * (1 + 1e-9)
    _ledger_adds_up(ds)


def test_weights_published_mid_fit_and_after_add_up_to_one_charge(shared) -> None:
    node, admin = shared
    ds = make_ds(admin, node, budget=1e9)
    data = ds.datasets["Digits"]
    model_ptr = _classifier().compile(to=ds)
    quoted = model_ptr.quote(data["images"], data["labels"], max_iter=40, batch_size=24)
    model_ptr.fit(data["images"], data["labels"], max_iter=40, batch_size=24, wait=False)
    early = []
    state = model_ptr.progress(wait=10)
    while state["status"] in ("queued", "running"):
        if state["total_steps"] and len(early) < 3:
            early.append(model_ptr.weights().publish())  # the last checkpoint's weights
        state = model_ptr.progress(wait=10)
    last = model_ptr.weights().publish()
    assert state["status"] == "done" and early
    charged = sum(r.cost for r in (*early, last))
    assert charged == pytest.approx(ds.privacy_budget.spent, rel=1e-9)
    assert ds.privacy_budget.spent == pytest.approx(quoted["cost"], rel=1e-6)
    _ledger_adds_up(ds)


# Defects ---------------------------------------------------------------------------


def test_target_epsilon_holds_when_validation_rows_were_trained_on_before(shared) -> None:
    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Digits"]
    x, y = data["images"], data["labels"]
    model_ptr = _classifier().compile(to=ds)
    model_ptr.fit(x, y, max_iter=1, batch_size=6, wait=True)  # every row joins the pool
    model_ptr.weights().publish()
    spent = ds.privacy_budget.spent
    plan = {"max_iter": 1, "batch_size": 6, "validation_split": 0.25, "target_epsilon": 1.0}
    quoted = model_ptr.quote(x, y, **plan)
    model_ptr.fit(x, y, wait=True, **plan)
    model_ptr.weights().publish()
    charged = ds.privacy_budget.spent - spent
    assert charged == pytest.approx(quoted["cost"], rel=1e-6)
    assert quoted["cost"] <= 1.0 + 1e-6 and charged <= 1.0 + 1e-6, (quoted["cost"], charged)


def test_a_subject_fits_validation_work_does_not_tell_who_owns_the_rows(
    shared, monkeypatch
) -> None:
    import veil.engine._trainer as trainer

    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    data = ds.datasets["Visits"]
    evaluated: list[int] = []
    original = trainer.DPTrainer._evaluate

    def counting(self, x, y, rows):
        evaluated.append(len(rows))
        return original(self, x, y, rows)

    monkeypatch.setattr(trainer.DPTrainer, "_evaluate", counting)
    work = []
    for start in (0, 8):  # 0 rows of held-out people, then 4 (the same public facts)
        evaluated.clear()
        model_ptr = _tabular().compile(to=ds, loss=nn.BinaryCrossEntropy())
        x, y = data["x"][start : start + 8], data["y"][start : start + 8]
        final = model_ptr.fit(
            x, y, max_iter=1, batch_size=2, validation_split=0.5, rows_per_subject=2, wait=True
        )
        assert final["status"] == "done"
        work.append(sum(evaluated))
    assert work[0] == work[1], f"rows evaluated for validation: {work}"
