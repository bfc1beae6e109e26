"""Red team, round eleven: LIFECYCLE changes while a data scientist's work is in flight.

The node's admin deletes the dataset a fit or a step is reading, disables the user,
moves its budget or the node's delta and step limit; the data scientist logs out
during a long poll or a step, or cancels a fit just as it ends. A gate (a wrapped
service function that holds its first call until the test opens it) opens each race
window deterministically in an in-process node; everything else is the public client,
raw HTTP and the admin's client over a real socket, on SQLite and PostgreSQL.

The oracle of every case: no 500 and no job failed by an unexpected fault; every
release charged and no charge past the budget (the releases add up to the epsilon
spent); no private value in an error, a job's error or a progress field; the model,
its cart and its job consistent afterwards (publishing costs the cart progress shows,
the model is free again); and later calls refused with clear typed errors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

import veil
from tests.attacks.scenario import VISITS_PEOPLE, raw_client, upload_people
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from veil import nn
from veil.server.db.tables.models import JobRow
from veil.server.jobs import fit as fit_job
from veil.server.services import fits, steps

ROWS = 64
# Values no public fact could produce: if one shows in an answer, a private value leaked.
_MARK = 7.654321


class _Gate:
    """Holds the first call of `module.name` for which `when` holds until `open()`."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        module: object,
        name: str,
        when: Callable[..., bool] = lambda *args, **kwargs: True,
    ) -> None:
        self.reached, self._go = threading.Event(), threading.Event()
        real = getattr(module, name)

        def held(*args: object, **kwargs: object) -> object:
            if not self.reached.is_set() and when(*args, **kwargs):
                self.reached.set()
                assert self._go.wait(60), "the test never opened the gate"
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, held)

    def wait(self) -> None:
        assert self.reached.wait(15), "the gated call never came"

    def open(self) -> None:
        self._go.set()


def _upload(admin: veil.Client, name: str = "A", seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 4)).astype(np.float32)
    x[3, 2] = _MARK
    y = (x[:, :1] > 0).astype(np.float32)
    admin.datasets.upload(name=name, assets={"x": x, "y": y}, bounds={"x": (-10, 10), "y": (0, 1)})


def _model(ds: veil.Client) -> veil.ModelPointer:
    model = nn.Model()
    model.add(nn.Dense(1, activation="sigmoid", input_shape=(None, 4)))
    return model.compile(to=ds)


def _data(ds: veil.Client, name: str = "A") -> tuple:
    data = ds.datasets[name]
    return data["x"], data["y"]


def _one_model(node, budget: float = 1e6) -> tuple:  # noqa: ANN001
    """(admin, a DS with `budget`, its model, dataset A's pointers)."""
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    _upload(admin)
    ds = make_ds(admin, node, budget=budget)
    return admin, ds, _model(ds), _data(ds)


def _ended(model_ptr: veil.ModelPointer) -> dict:
    for _ in range(120):
        state = model_ptr.progress(wait=1)
        if state["status"] not in ("queued", "running"):
            return state
    raise AssertionError(f"the job never ended: {state}")


def _ended_job(node, model_id: str) -> JobRow:  # noqa: ANN001
    """The model's latest job, once ended, read as the admin's dashboard reads it."""
    for _ in range(600):
        with node.ctx.db.session() as session:
            job = fits.latest_job(session, model_id=model_id)
            if job is not None and job.status not in ("queued", "running"):
                return job
        threading.Event().wait(0.05)
    raise AssertionError("the job never ended")


def _answer(answers: list, call: Callable, *args: object) -> None:
    """`call(*args)`'s result or typed error, appended to `answers` (for a thread)."""
    try:
        answers.append(call(*args))
    except veil.VeilError as exc:
        answers.append(exc)


def _no_private_text(*texts: object) -> None:
    for text in texts:
        assert "7.654" not in str(text) and "ServerError" not in str(text), text


def _consistent(ds: veil.Client, model_ptr: veil.ModelPointer, *, budget: float) -> None:
    """The releases add up to the epsilon spent, within the budget; publishing the
    weights costs the cart progress shows; the model is free for more work."""
    cart = model_ptr.progress()["cart"]
    published = model_ptr.weights().publish()
    assert published.cost == pytest.approx(cart, rel=1e-6, abs=1e-9)
    releases, spent = ds.releases, ds.privacy_budget.spent
    assert sum(r.cost for r in releases) == pytest.approx(spent, rel=1e-6, abs=1e-9)
    assert releases[-1].spent_after == pytest.approx(spent, rel=1e-9)
    assert spent <= budget * (1 + 1e-9)
    assert model_ptr.weights().publish().cost == 0.0  # paid once
    assert model_ptr.refresh()._info["busy_job_id"] is None


# The dataset deleted under work ------------------------------------------------------


def test_a_dataset_deleted_before_its_fit_loads_fails_the_fit_plainly(node, monkeypatch) -> None:
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    _upload(admin)
    _upload(admin, "B", seed=1)
    ds = make_ds(admin, node, budget=1e6)
    model_ptr = _model(ds)
    x, y = _data(ds)
    gate = _Gate(monkeypatch, fit_job, "_load")  # claimed, its rows not yet read
    model_ptr.fit(x, y, max_iter=1, batch_size=16, validation_split=0.25, wait=False)
    gate.wait()
    admin.datasets.delete("A")
    gate.open()
    state = _ended(model_ptr)
    assert state["status"] == "failed"
    assert state["error"].startswith("NotFound: No asset or view"), state["error"]
    _no_private_text(state)
    assert ds.privacy_budget.spent == 0.0 and model_ptr.refresh()._info["steps"] == 0
    with pytest.raises(veil.NotFound):
        model_ptr.fit(x, y, max_iter=1, batch_size=16, wait=False)
    bx, by = _data(ds, "B")
    model_ptr.step(bx[0:8], by[0:8])  # the model is free and whole
    _consistent(ds, model_ptr, budget=1e6)


def test_a_dataset_deleted_between_a_fits_epochs_leaves_every_step_charged(
    node, monkeypatch
) -> None:
    admin, ds, model_ptr, (x, y) = _one_model(node)
    quoted = model_ptr.quote(x, y, max_iter=2, batch_size=16, validation_split=0.25)
    # The first epoch's end: its trainer state staged, not yet the model's version.
    gate = _Gate(monkeypatch, fit_job, "stage_checkpoint")
    model_ptr.fit(x, y, max_iter=2, batch_size=16, validation_split=0.25, wait=False)
    gate.wait()
    admin.datasets.delete("A")
    assert admin.datasets.names() == []
    gate.open()
    state = _ended(model_ptr)
    # What was read before the delete finishes as planned; its cost is charged.
    assert state["status"] == "done" and state["error"] is None, state
    _no_private_text(state)
    assert model_ptr.refresh()._info["steps"] == quoted["steps"]
    assert [m["released"] for m in state["metrics"]] == [True, True]
    _consistent(ds, model_ptr, budget=1e6)
    # The validation releases paid the model's cart as they went: all as quoted.
    assert ds.privacy_budget.spent == pytest.approx(quoted["cart_after"], rel=1e-6)
    with pytest.raises(veil.NotFound, match="No asset or view"):
        model_ptr.step(x[0:8], y[0:8])


def test_a_dataset_deleted_during_a_step_and_before_its_publishes(node, monkeypatch) -> None:
    admin, ds, model_ptr, (x, y) = _one_model(node)
    loss0, _ = model_ptr.step(x[0:8], y[0:8])
    gate = _Gate(monkeypatch, steps, "encode_state")  # computed, not yet committed
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(model_ptr.step(x[8:16], y[8:16])))
    thread.start()
    gate.wait()
    admin.datasets.delete("A")
    gate.open()
    thread.join(60)
    assert len(answers) == 1  # the step read its rows before the delete: it is kept
    assert model_ptr.refresh()._info["steps"] == 2
    loss1, preds1 = answers[0]
    for pointer in (loss0, loss1, preds1):  # its objects are the model's, charged alike
        published = pointer.publish(sigma=5.0)
        assert published.cost >= 0 and published.object_id == pointer.id
        _no_private_text(published.result)
    _consistent(ds, model_ptr, budget=1e6)
    with pytest.raises(veil.NotFound, match="No asset or view"):
        model_ptr.step(x[0:8], y[0:8])
    with pytest.raises(veil.NotFound, match="No asset or view"):
        model_ptr.evaluate(x[0:8], y[0:8], epsilon=1.0)


def test_a_dataset_deleted_between_a_pointers_lookup_and_its_file_is_not_found(
    node, monkeypatch
) -> None:
    """A request looks the asset up, the admin's delete commits and removes the files,
    then the request opens the file: it answers as if the delete had come first."""
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    ds = make_ds(admin, node, budget=1e6)
    arrays = node.ctx.arrays
    datasets_dir = arrays.datasets_dir
    for seed, (name, call) in enumerate(
        [
            ("step", lambda m, x, y: m.step(x[0:8], y[0:8])),
            ("evaluate", lambda m, x, y: m.evaluate(x[0:8], y[0:8], epsilon=1.0)),
            ("fit", lambda m, x, y: m.fit(x, y, max_iter=1, batch_size=16, wait=False)),
            ("load", lambda m, x, y: x[0:4].mock),
        ]
    ):
        _upload(admin, f"D{seed}", seed=seed)
        model_ptr = _model(ds)
        x, y = _data(ds, f"D{seed}")
        method = "load" if name == "load" else "open"
        gate = _Gate(monkeypatch, arrays, method, lambda path: datasets_dir in path.parents)
        answers: list = []
        thread = threading.Thread(target=_answer, args=(answers, call, model_ptr, x, y))
        thread.start()
        gate.wait()
        admin.datasets.delete(f"D{seed}")
        gate.open()
        thread.join(60)
        monkeypatch.undo()
        assert isinstance(answers[0], veil.NotFound), (name, answers[0])
        _no_private_text(answers[0])
        assert model_ptr.refresh()._info["busy_job_id"] is None
        assert ds.privacy_budget.spent == 0.0
    # A dataset whose unit is the person: its subjects' file is opened after the assets'.
    upload_people(admin, "People", VISITS_PEOPLE, np.random.default_rng(0))
    model_ptr = _model(ds)
    x, y = _data(ds, "People")
    gate = _Gate(monkeypatch, arrays, "open", lambda path: path.name == "subjects.npy")
    answers = []
    thread = threading.Thread(
        target=_answer, args=(answers, lambda: model_ptr.step(x[0:8], y[0:8]))
    )
    thread.start()
    gate.wait()
    admin.datasets.delete("People")
    gate.open()
    thread.join(60)
    assert isinstance(answers[0], veil.NotFound), answers[0]
    assert model_ptr.refresh()._info["steps"] == 0


# The user's account moved under a fit -----------------------------------------------


def test_a_user_disabled_during_a_fit_with_validation_is_locked_out_cleanly(
    node, monkeypatch
) -> None:
    admin, ds, model_ptr, (x, y) = _one_model(node, budget=50.0)
    email = ds.users.me().email
    gate = _Gate(monkeypatch, fit_job, "stage_checkpoint")
    model_ptr.fit(x, y, max_iter=2, batch_size=16, validation_split=0.25, wait=False)
    gate.wait()
    waiting = _model(ds)  # one job runs per user: this one waits in the queue
    assert waiting.fit(x, y, max_iter=1, batch_size=16, wait=False)["status"] == "queued"
    admin.users.disable(email)
    gate.open()
    with pytest.raises(veil.AuthenticationError):
        model_ptr.progress()
    with raw_client(node, ds) as raw:
        assert raw.get(f"/models/{model_ptr.id}/progress").status_code == 401
    # Disabling stops the account's jobs: the queued one at once, the running one after
    # its first epoch (so it charges no more releases); both end recorded (the admin's
    # dashboard reads these rows), the ledger within budget.
    job = _ended_job(node, model_ptr.id)
    assert (job.status, job.epoch, job.error) == ("cancelled", 1, None)
    queued = _ended_job(node, waiting.id)
    assert (queued.status, queued.step, queued.error) == ("cancelled", 0, None)
    entry = next(e for e in admin.ledger if e.email == email)
    assert entry.spent <= entry.budget * (1 + 1e-9)
    with pytest.raises(veil.AuthenticationError):
        login(node, email, "ds-password-123")


def test_a_budget_lowered_below_spent_mid_fit_withholds_and_keeps_the_cart(
    node, monkeypatch
) -> None:
    admin, ds, model_ptr, (x, y) = _one_model(node, budget=1e6)
    email = ds.users.me().email
    model_ptr.evaluate(x[0:16], y[0:16], epsilon=0.5)
    spent = ds.privacy_budget.spent
    gate = _Gate(monkeypatch, fit_job, "stage_checkpoint")
    model_ptr.fit(x, y, max_iter=2, batch_size=16, validation_split=0.25, wait=False)
    gate.wait()
    admin.users.set_budget(email, spent / 2)
    gate.open()
    state = _ended(model_ptr)
    assert state["status"] == "done" and state["error"] is None
    assert [m["released"] for m in state["metrics"]] == [False, False]
    _no_private_text(state)
    assert ds.privacy_budget.spent == spent  # nothing charged past the budget
    cart = model_ptr.progress()["cart"]
    with pytest.raises(veil.BudgetExceeded):
        model_ptr.weights().publish()
    assert ds.privacy_budget.spent == spent and model_ptr.progress()["cart"] == cart
    admin.users.set_budget(email, 1e6)
    _consistent(ds, model_ptr, budget=1e6)


def test_a_budget_set_to_exactly_a_quotes_need_pays_the_fit_and_its_publish(node) -> None:
    admin, ds, model_ptr, (x, y) = _one_model(node, budget=1e6)
    email = ds.users.me().email
    model_ptr.evaluate(x[0:16], y[0:16], epsilon=0.3)
    plan = dict(max_iter=2, batch_size=16, validation_split=0.25, target_epsilon=1.0)
    quoted = model_ptr.quote(x, y, **plan)
    need = quoted["spent"] + quoted["cart_after"]
    admin.users.set_budget(email, need)
    final = model_ptr.fit(x, y, **plan, wait=True)
    assert final["status"] == "done"
    assert [m["released"] for m in final["metrics"]] == [True, True]
    _consistent(ds, model_ptr, budget=need)
    assert ds.privacy_budget.spent == pytest.approx(need, rel=1e-6)
    with pytest.raises(veil.BudgetExceeded):
        model_ptr.evaluate(x[0:16], y[0:16], epsilon=0.1)


def test_delta_and_step_limit_changed_between_quote_fit_and_its_epochs(node, monkeypatch) -> None:
    admin, ds, model_ptr, (x, y) = _one_model(node)
    plan = dict(max_iter=2, batch_size=16, validation_split=0.25, target_epsilon=2.0)
    before = model_ptr.quote(x, y, **plan)
    admin.update_node(delta=before["delta"] / 10)
    gate = _Gate(monkeypatch, fit_job, "stage_checkpoint")
    job = model_ptr.fit(x, y, **plan, wait=False)
    assert job["sigma"] > before["sigma"]  # priced again at the node's delta now
    gate.wait()
    admin.update_node(delta=before["delta"], max_fit_steps=1)  # queued within the old one
    gate.open()
    state = _ended(model_ptr)
    assert state["status"] == "done" and state["error"] is None
    assert all(m["released"] for m in state["metrics"]), state["metrics"]
    assert model_ptr.refresh()._info["steps"] == job["steps"]
    _consistent(ds, model_ptr, budget=1e6)
    with pytest.raises(veil.ValidationError, match="at most 1 steps"):
        model_ptr.fit(x, y, max_iter=1, batch_size=16, wait=False)


# The data scientist's own session and cancel ----------------------------------------


def test_logging_out_during_a_long_poll_and_a_step(node, monkeypatch) -> None:
    admin, ds, model_ptr, (x, y) = _one_model(node, budget=1e6)
    email = ds.users.me().email
    raw = raw_client(node, ds)
    gate = _Gate(monkeypatch, fit_job, "stage_checkpoint")
    model_ptr.fit(x, y, max_iter=1, batch_size=16, wait=False)
    gate.wait()
    polled: list = []
    poll = threading.Thread(
        target=lambda: polled.append(raw.get(f"/models/{model_ptr.id}/progress?wait=5"))
    )
    poll.start()
    ds.logout()
    gate.open()
    poll.join(30)
    # The poll was let in before the logout: it answers, with public counts only.
    assert polled[0].status_code in (200, 401), polled[0].text
    _no_private_text(polled[0].text)
    assert raw.get(f"/models/{model_ptr.id}/progress").status_code == 401
    again = login(node, email, "ds-password-123")
    model_ptr = again.models.get(model_ptr.id)
    _ended(model_ptr)
    # A step in flight when its token is revoked: kept whole, or not at all.
    x, y = _data(again)
    gate = _Gate(monkeypatch, steps, "encode_state")
    answers: list = []
    raw = raw_client(node, again)
    body = {"x": x[0:8].id, "y": y[0:8].id}
    thread = threading.Thread(
        target=lambda: answers.append(raw.post(f"/models/{model_ptr.id}/step", json=body))
    )
    thread.start()
    gate.wait()
    again.logout()
    gate.open()
    thread.join(60)
    assert answers[0].status_code in (200, 401), answers[0].text
    third = login(node, email, "ds-password-123")
    model_ptr = third.models.get(model_ptr.id)
    fit_steps = 4
    assert model_ptr._info["steps"] == fit_steps + (answers[0].status_code == 200)
    _consistent(third, model_ptr, budget=1e6)


def test_a_fit_cancelled_as_it_finishes_ends_once_with_every_step_charged(
    node, monkeypatch
) -> None:
    admin, ds, model_ptr, (x, y) = _one_model(node)
    quoted = model_ptr.quote(x, y, max_iter=1, batch_size=16, validation_split=0.25)
    # Every step trained; the transaction that checkpoints them and ends the job not begun.
    gate = _Gate(monkeypatch, fit_job, "_checkpoint", lambda *a, **k: k.get("ending") is not None)
    model_ptr.fit(x, y, max_iter=1, batch_size=16, validation_split=0.25, wait=False)
    gate.wait()
    answer = model_ptr.cancel()
    assert answer["status"] == "running" and answer["cancel_requested"]
    with pytest.raises(veil.Conflict):  # still the job's until it is recorded as ended
        model_ptr.step(x[0:8], y[0:8])
    gate.open()
    state = _ended(model_ptr)
    assert state["status"] == "done" and state["error"] is None, state
    assert model_ptr.refresh()._info["steps"] == quoted["steps"]
    assert model_ptr.cancel()["status"] == "done"  # a no-op once it ended
    _consistent(ds, model_ptr, budget=1e6)
    model_ptr.fit(x, y, max_iter=1, batch_size=16, wait=True)  # free for the next


ONLY = "load"
