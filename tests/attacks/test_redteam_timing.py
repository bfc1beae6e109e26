"""Red-team round ten: timing, read as the work done on private values. Which rows a
person owns, how many, and in what order the dataset holds them are private; the rows a
data scientist names, their count and the dataset's subject count are public. Each test
runs the same public call on two neighbouring inputs and counts what the node's code
processed (slots released, comparisons a sort made), never a wall-clock time."""

from __future__ import annotations

import numpy as np
import pytest

from tests.attacks.scenario import VISITS_PEOPLE, upload_people
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.nodes import running_node
from veil import nn
from veil.engine import DPTrainer

PEOPLE, ROWS_EACH = 300, 8


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One SQLite node with two subject datasets of 24 rows and 9 people: in "Visits"
    the four people a fit holds out (ranks 5-8) own 8 rows, in "Visits2" 9."""
    with running_node(tmp_path_factory.mktemp("redteam-timing") / "node") as node:
        admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
        rng = np.random.default_rng(0)
        for name, person in (("Visits", VISITS_PEOPLE), ("Visits2", np.arange(24) % 9)):
            upload_people(admin, name, person, rng)
        yield node, admin
        admin.close()


def test_a_fits_validation_release_reads_every_slot_whoever_owns_the_rows(
    shared, monkeypatch
) -> None:
    """With rows_per_subject k (3 here) validation evaluates k slots per held-out
    person; the release then averaged only the real slots, as many as the held-out
    people own (8 or 9 here, up to k x people: a gather, a search and two bincounts of
    that size per epoch). Now it reads all k x 4 = 12, the padding dropped by value."""
    from veil.server.services import fits

    node, admin = shared
    ds = make_ds(admin, node, budget=1e6)
    original, seen = fits.per_subject, []

    def recording(metrics, ranks, subjects):
        seen.append((metrics.n, int(ranks.size)))
        return original(metrics, ranks, subjects)

    monkeypatch.setattr(fits, "per_subject", recording)
    work, values = [], []
    for name in ("Visits", "Visits2"):
        seen.clear()
        model = nn.Model()
        model.add(nn.Dense(1, activation="sigmoid", input_shape=(None, 4)))
        model_ptr = model.compile(to=ds, loss=nn.BinaryCrossEntropy())
        data = ds.datasets[name]
        final = model_ptr.fit(
            data["x"], data["y"], max_iter=1, batch_size=2, validation_split=0.5, wait=True
        )
        assert final["status"] == "done", final
        work.append(list(seen))
        values.append(final["metrics"][-1]["val_loss"])
    assert work[0] == work[1] == [(12, 12)], work
    assert all(np.isfinite(values)), values


def _spec() -> nn.ModelSpec:
    return nn.ModelSpec.build(
        (None, 4),
        [nn.Dense(1, input_shape=(None, 4))],
        loss=nn.MeanSquaredError(),
        optimizer=nn.SGD(0.1),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )


def _layouts() -> dict[str, np.ndarray]:
    """Each row's person: the rows in person order; the neighbour, where person 0's rows
    are spread through the dataset; the same people in a random order; and as many rows
    held by one person, by two, in pairs, or each by a person of its own (numpy sorted a
    million rows of one person in half the time of a million people)."""
    ordered = np.repeat(np.arange(PEOPLE), ROWS_EACH)
    spread = ordered.copy()
    elsewhere = np.linspace(ROWS_EACH, ordered.size - 1, ROWS_EACH).astype(np.int64)
    spread[:ROWS_EACH], spread[elsewhere] = spread[elsewhere], 0
    mixed = np.random.default_rng(1).permutation(ordered)
    rows = np.arange(ordered.size)
    return {
        "ordered": ordered,
        "spread": spread,
        "mixed": mixed,
        "one person": np.zeros_like(ordered),
        "two people": (rows >= rows.size // 2).astype(np.int64),
        "pairs": rows // 2,
        "each apart": rows,
    }


class _Key:
    """An int that counts the comparisons a sort makes on it."""

    __slots__ = ("count", "value")

    def __init__(self, value: int, count: list[int]) -> None:
        self.value, self.count = value, count

    def __lt__(self, other: _Key) -> bool:
        self.count[0] += 1
        return self.value < other.value


def _counting_sorts(monkeypatch) -> list[int]:
    """Wrap np.argsort: each sort of integers (the sorts of subjects) records how many
    comparisons a merge sort of the same keys in the same order makes (numpy's default
    quicksort is as sensitive to that order, but its count varies more between two
    random orders, which would blur the test)."""
    original, counts = np.argsort, []

    def argsort(a, *args, **kwargs):
        keys = np.asarray(a)
        if keys.dtype.kind in "iu":
            count = [0]
            original(np.array([_Key(v, count) for v in keys.tolist()], dtype=object), kind="stable")
            counts.append(count[0])
        return original(a, *args, **kwargs)

    monkeypatch.setattr(np, "argsort", argsort)
    return counts


def test_sorting_rows_by_person_works_alike_however_the_dataset_orders_them(
    monkeypatch,
) -> None:
    """A fit's setup and a subject-level step sort rows by person. A comparison sort's
    work follows what it is given: on a million rows in person order numpy's stable
    argsort took 0.5 ms, with one person's 8 rows moved elsewhere 1.6 ms, in a random
    order 78 ms; and fewer people sort faster (repeated keys). So the sorts take
    distinct keys (person, row) in an order shuffled from the trainer's stream, and
    compare about as often on any layout, and however many people hold the rows
    (within 3%: the shuffle is random)."""
    counts = _counting_sorts(monkeypatch)
    rows = PEOPLE * ROWS_EACH
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = rng.normal(size=(rows, 1)).astype(np.float32)
    work = {}
    for name, people in _layouts().items():
        counts.clear()
        trainer = DPTrainer(_spec(), seed=2)
        trainer.fit(
            x,
            y,
            train_rows=np.arange(rows),
            epochs=1,
            batch_size=PEOPLE,
            subjects=people,
            train_subjects=np.arange(rows),  # public: every rank a row could hold
            rows_per_subject=1,
        )
        trainer.step(x, y, subjects=people)
        work[name] = list(counts)
    assert all(len(c) == 2 for c in work.values()), work  # the fit's sort, the step's
    for setup_and_step in zip(*work.values(), strict=True):
        assert max(setup_and_step) <= 1.03 * min(setup_and_step), work


def test_a_grouped_release_sorts_its_subjects_alike_however_they_are_laid_out(
    monkeypatch,
) -> None:
    """A release on a subject-level dataset (statistics on a slice, evaluate, publishing
    a step's objects) groups its rows by person with a sort, whose work followed the
    order the data scientist's rows hold the people in (private), and how many people
    hold them (a red-team helper timed statistics on a slice of one person against one
    of as many people as rows: 110 against 118 ms at a million rows). The sort now takes
    distinct keys in a random order: comparisons agree within 3% on any layout, the
    result exactly."""
    from veil.privacy import bounding

    counts = _counting_sorts(monkeypatch)
    work = {}
    for name, people in _layouts().items():
        counts.clear()
        order, slots = bounding._subject_order(people, people.size)
        index = order.scatter(order.numbers)
        assert slots == people.size
        assert len(counts) == 1, counts
        work[name] = counts[0]
        _, expected = np.unique(people, return_inverse=True)
        np.testing.assert_array_equal(index, expected)
    assert max(work.values()) <= 1.03 * min(work.values()), work


def test_a_fits_check_of_its_subjects_reads_a_table_not_a_sort(monkeypatch) -> None:
    """A fit by subject checks that its rows belong to the training pool. numpy's `isin`
    may sort the rows' ranks with the pool (work that follows how many rows share a
    person); over the node's ranks it reads a table of the pool's span instead."""
    original, kinds = np.isin, []

    def isin(element, test_elements, *args, kind=None, **kwargs):  # noqa: ANN001, ANN202
        kinds.append(kind)
        return original(element, test_elements, *args, kind=kind, **kwargs)

    monkeypatch.setattr(np, "isin", isin)
    people = _layouts()["mixed"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(people.size, 4)).astype(np.float32)
    y = rng.normal(size=(people.size, 1)).astype(np.float32)
    DPTrainer(_spec(), seed=2).fit(
        x,
        y,
        train_rows=np.arange(people.size // 2),  # a small part: numpy would have sorted
        epochs=1,
        batch_size=PEOPLE,
        subjects=people,
        train_subjects=np.unique(people[: people.size // 2]),
        rows_per_subject=1,
    )
    assert kinds == ["table"], kinds
