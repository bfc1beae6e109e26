"""Subject-level DP-SGD: a person with many rows moves training by one clipped gradient."""

from __future__ import annotations

import numpy as np
import pytest

from veil import ValidationError, nn
from veil.engine import DPTrainer
from veil.engine._subjects import SubjectIndex

CLIP = 1.0
LR = 0.1


def _linear_spec(width: int) -> nn.ModelSpec:
    return nn.ModelSpec.build(
        (None, width),
        [nn.Dense(1, input_shape=(None, width))],
        loss=nn.MeanSquaredError(),
        optimizer=nn.SGD(LR),
        noise_multiplier=1.0,
        max_grad_norm=CLIP,
    )


def _data(people: int = 40, rows_of_first: int = 12, width: int = 4):
    """`people` subjects of one row each, except subject 0 with `rows_of_first`
    identical rows whose gradients all point the same way (each far above the clip)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(people - 1 + rows_of_first, width)).astype(np.float32)
    y = rng.normal(size=(x.shape[0], 1)).astype(np.float32)
    x[:rows_of_first] = 10.0
    y[:rows_of_first] = -1000.0
    subjects = np.concatenate(
        [np.zeros(rows_of_first, np.int64), np.arange(1, people, dtype=np.int64)]
    )
    return x, y, subjects


def _one_full_step(x, y, subjects, *, units: int) -> np.ndarray:
    """Weights after one step with every unit sampled (batch_size = units, q = 1)."""
    trainer = DPTrainer(_linear_spec(x.shape[1]), seed=3)
    trainer.fit(
        x,
        y,
        train_rows=np.arange(x.shape[0]),
        epochs=1,
        batch_size=units,
        subjects=subjects,
        train_subjects=None if subjects is None else np.unique(subjects),
    )
    return np.concatenate([w.ravel() for w in trainer.get_weights().values()])


def _without_subject_zero(x: np.ndarray, rows: int) -> np.ndarray:
    """The neighbouring data set: the subject's rows replaced by rows that contribute
    nothing (NaN inputs), everything else, including the sampling, unchanged."""
    gone = x.copy()
    gone[:rows] = np.nan
    return gone


def test_a_subject_with_many_rows_moves_a_step_by_one_clipped_gradient() -> None:
    x, y, subjects = _data()
    people = int(subjects.max()) + 1
    moved = _one_full_step(x, y, subjects, units=people) - _one_full_step(
        _without_subject_zero(x, 12), y, subjects, units=people
    )
    # One step: the update differs by lr x (one clipped term) / expected subjects.
    assert np.linalg.norm(moved) <= LR * CLIP / people * (1 + 1e-4)
    assert np.linalg.norm(moved) > 0.5 * LR * CLIP / people  # it did take part


def test_at_row_level_the_same_person_moves_a_step_by_each_of_its_rows() -> None:
    x, y, _ = _data()
    n = x.shape[0]
    moved = _one_full_step(x, y, None, units=n) - _one_full_step(
        _without_subject_zero(x, 12), y, None, units=n
    )
    # Twelve aligned clipped rows: about 12 units' worth, where DP per row assumes one.
    assert np.linalg.norm(moved) > 10 * LR * CLIP / n


def test_step_clips_the_rows_of_one_subject_together() -> None:
    x, y, _ = _data(people=3, rows_of_first=2)
    before = DPTrainer(_linear_spec(4), seed=1)
    weights = [before.get_weights()]

    def after(subjects):
        trainer = DPTrainer(_linear_spec(4), seed=1)
        result = trainer.step(x[:2], y[:2], subjects=subjects)
        return result, np.concatenate([w.ravel() for w in trainer.get_weights().values()])

    one, moved_one = after(np.array([7, 7]))
    two, moved_two = after(np.array([7, 8]))
    rows, moved_rows = after(None)
    start = np.concatenate([w.ravel() for w in weights[0].values()])
    # Same noise: the subject's two aligned rows count once, two subjects twice.
    np.testing.assert_allclose(
        np.linalg.norm(moved_two - start - (moved_one - start)), LR * CLIP / 2, rtol=1e-3
    )
    np.testing.assert_allclose(moved_two, moved_rows, rtol=1e-6)
    np.testing.assert_array_equal(one.metrics.losses, rows.metrics.losses)


def test_step_answers_in_the_callers_row_order() -> None:
    x, y, _ = _data(people=5, rows_of_first=1)
    plain = DPTrainer(_linear_spec(4), seed=2).step(x[:5], y[:5])
    grouped = DPTrainer(_linear_spec(4), seed=2).step(
        x[:5], y[:5], subjects=np.array([3, 1, 3, 0, 1])
    )
    np.testing.assert_allclose(grouped.metrics.losses, plain.metrics.losses, rtol=1e-6)
    np.testing.assert_allclose(grouped.preds, plain.preds, rtol=1e-6)


def test_fit_samples_subjects_and_reports_their_rate() -> None:
    x, y, subjects = _data(people=40, rows_of_first=30)
    trainer = DPTrainer(_linear_spec(4), seed=0)
    result = trainer.fit(
        x, y, train_rows=np.arange(len(x)), epochs=2, batch_size=8, subjects=subjects
    )
    assert result.sampling_rate == 8 / 40  # over 40 subjects, not 69 rows
    assert result.steps_per_epoch == 5
    assert result.steps_done == 10


@pytest.mark.parametrize("bad", [np.zeros(3, np.int64), np.zeros(69), [0] * 69])
def test_subjects_must_be_one_integer_per_row(bad) -> None:
    x, y, _ = _data(people=40, rows_of_first=30)
    with pytest.raises(ValidationError, match="one entry per row"):
        DPTrainer(_linear_spec(4)).fit(
            x, y, train_rows=np.arange(len(x)), epochs=1, batch_size=8, subjects=bad
        )
    with pytest.raises(ValidationError, match="rows_per_subject"):
        DPTrainer(_linear_spec(4)).fit(
            x,
            y,
            train_rows=np.arange(len(x)),
            epochs=1,
            batch_size=8,
            subjects=np.zeros(len(x), np.int64),
            rows_per_subject=0,
        )


def _index() -> SubjectIndex:
    rows = np.arange(10, 20)
    subjects = np.array([5, 5, 5, 5, 5, 2, 2, 9, 5, 2])  # 5 owns six rows, 2 three, 9 one
    return SubjectIndex(rows, subjects, pool=np.array([2, 5, 9, 11]))  # 11 owns none


def test_gather_takes_every_row_of_the_chosen_subjects() -> None:
    rng = np.random.default_rng(0)
    batch = _index().gather(np.array([1, 3]), rows_per_subject=None, uniform=rng.random)
    assert sorted(batch.rows.tolist()) == [10, 11, 12, 13, 14, 18]
    assert batch.groups.tolist() == [0] * 6 and batch.real.all()


def test_gather_pads_every_subject_to_exactly_k_slots() -> None:
    rng = np.random.default_rng(0)
    batch = _index().gather(np.array([0, 1, 2, 3]), rows_per_subject=2, uniform=rng.random)
    assert batch.groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert batch.real.tolist() == [True, True, True, True, True, False, False, False]
    assert set(batch.rows[:2]) <= {15, 16, 19} and len(set(batch.rows[:2])) == 2
    assert set(batch.rows[2:4]) <= {10, 11, 12, 13, 14, 18}
    assert batch.rows[4] == 17


def test_gather_picks_a_subjects_rows_uniformly() -> None:
    rng = np.random.default_rng(1)
    index = _index()
    counts = dict.fromkeys([10, 11, 12, 13, 14, 18], 0)
    for _ in range(3000):
        for row in index.gather(np.array([1]), rows_per_subject=2, uniform=rng.random).rows:
            counts[int(row)] += 1
    # each of the six rows is kept with probability 2/6: 1000 of 3000 expected
    assert all(900 < c < 1100 for c in counts.values()), counts


def test_gather_draws_k_per_subject_whatever_they_own() -> None:
    """With rows_per_subject, gathering a subject of a million rows is the same work as
    one of a single row: k uniforms each, k distinct rows (or all, padded)."""
    rows = np.arange(1_000_001)
    subjects = np.concatenate([np.zeros(1_000_000, np.int64), [1]])
    index = SubjectIndex(rows, subjects, pool=np.array([0, 1]))
    drawn: list[int] = []

    def uniform(n: int) -> np.ndarray:
        drawn.append(n)
        return np.random.default_rng(len(drawn)).random(n)

    for chosen in ([0], [1], [0, 1]):
        batch = index.gather(np.array(chosen), rows_per_subject=5, uniform=uniform)
        assert batch.rows.size == 5 * len(chosen)
        heavy = batch.rows[batch.groups == 0] if 0 in chosen else np.array([])
        assert len(set(heavy.tolist())) == heavy.size  # distinct rows of the big subject
    assert drawn == [5, 5, 10]


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_a_subject_whose_rows_span_chunks_is_clipped_once(chunk: int) -> None:
    """Rows go through in fixed chunks whoever owns them; a subject whose rows go on
    into the next chunks (subject 0 over two, subject 3 over three or more) is summed
    whole before its one clip, as with every row in one chunk."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 4)).astype(np.float32) * 5
    y = rng.normal(size=(16, 1)).astype(np.float32) * 50  # every gradient far above the clip
    subjects = np.array([9, 9, 9, 9, 9, 4, 2, 2, 7, 7, 7, 7, 7, 7, 7, 1])

    def weights(rows_per_chunk: int) -> np.ndarray:
        trainer = DPTrainer(_linear_spec(4), seed=4)
        trainer._chunk = rows_per_chunk
        trainer.step(x, y, subjects=subjects)
        return np.concatenate([w.ravel() for w in trainer.get_weights().values()])

    np.testing.assert_allclose(weights(chunk), weights(64), rtol=1e-5, atol=1e-6)


def test_a_steps_work_does_not_depend_on_who_owns_its_rows(monkeypatch) -> None:
    import veil.engine._dpsgd as dpsgd

    clipped: list[tuple[int, ...]] = []
    original = dpsgd.clip_and_sum

    def counting(grads, max_grad_norm, valid=None):  # noqa: ANN001, ANN202
        clipped.append(tuple(g.shape[0] for g in grads.values()))
        return original(grads, max_grad_norm, valid)

    monkeypatch.setattr(dpsgd, "clip_and_sum", counting)
    x, y, _ = _data(people=16, rows_of_first=1)
    work = []
    for subjects in (np.zeros(16, np.int64), np.arange(16), np.repeat(np.arange(4), 4)):
        clipped.clear()
        trainer = DPTrainer(_linear_spec(4), seed=1)
        trainer._chunk = 5
        trainer.step(x[:16], y[:16], subjects=subjects)
        work.append(list(clipped))
    assert work[0] == work[1] == work[2] and work[0]  # the same, and some


def test_validation_by_subject_evaluates_k_slots_per_held_out_subject(monkeypatch) -> None:
    """How many validation rows the held-out people own is private: with
    rows_per_subject k, validation evaluates k slots for each, padded or sampled."""
    evaluated: list[int] = []
    original = DPTrainer._evaluate

    def counting(self, x, y, rows):  # noqa: ANN001, ANN202
        evaluated.append(len(rows))
        return original(self, x, y, rows)

    monkeypatch.setattr(DPTrainer, "_evaluate", counting)
    x, y, _ = _data(people=12, rows_of_first=1)
    train, val = np.arange(8), np.arange(8, 12)
    kept = []
    for val_subjects_rows in ([20, 20, 20, 20], [20, 21, 22, 23]):  # one person, or four
        subjects = np.concatenate([np.arange(8), val_subjects_rows]).astype(np.int64)
        trainer = DPTrainer(_linear_spec(4), seed=0)
        result = trainer.fit(
            x[:12],
            y[:12],
            train_rows=train,
            val_rows=val,
            epochs=1,
            batch_size=4,
            subjects=subjects,
            rows_per_subject=2,
            val_subjects=np.array([20, 21, 22, 23]),
        )
        info = result.history[-1]
        assert len(info.validation_rows) == info.validation.n == 8  # all slots, to release
        kept.append(int(info.validation_real.sum()))
    assert evaluated == [8, 8]  # 4 held-out subjects x 2 slots, whoever owns the rows
    assert kept == [2, 4]  # the real slots, which the release keeps


def test_a_fits_setup_sorts_only_the_rows_it_was_given(monkeypatch) -> None:
    """How many rows the training and the held-out people own is private; their total,
    the rows given, is not. The fit's setup sorts and indexes all of them together, so
    its work is the same however they split (it once sorted each part apart)."""
    import veil.engine._subjects as subjects_module
    import veil.engine._trainer as trainer_module

    sorted_sizes: list[int] = []
    original_argsort, original_check = np.argsort, trainer_module.check_rows

    def argsort(a, *args, **kwargs):  # noqa: ANN001, ANN202
        sorted_sizes.append(len(a))
        return original_argsort(a, *args, **kwargs)

    def check_rows(name, rows, n):  # noqa: ANN001, ANN202
        sorted_sizes.append(len(rows))
        return original_check(name, rows, n)

    monkeypatch.setattr(subjects_module.np, "argsort", argsort)
    monkeypatch.setattr(trainer_module, "check_rows", check_rows)
    x, y, _ = _data(people=12, rows_of_first=1)
    seen = []
    for subjects in (  # the held-out people (4, 5) own 2 rows, or 6: private
        np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 4, 5]),
        np.array([0, 0, 1, 1, 2, 3, 4, 4, 4, 5, 5, 5]),
    ):
        rows = np.arange(12)
        held = subjects >= 4
        sorted_sizes.clear()
        DPTrainer(_linear_spec(4), seed=0).fit(
            x[:12],
            y[:12],
            train_rows=rows[~held],
            val_rows=rows[held],
            epochs=1,
            batch_size=2,
            subjects=subjects,
            train_subjects=np.arange(4),
            val_subjects=np.array([4, 5]),
            rows_per_subject=3,
        )
        seen.append(list(sorted_sizes))
    assert seen[0] == seen[1] and seen[0] and set(seen[0]) == {12}


def test_a_subject_split_keeps_each_subject_on_one_side() -> None:
    x, y, _ = _data(people=12, rows_of_first=1)
    subjects = np.repeat(np.arange(6), 2)
    fit = {"epochs": 1, "batch_size": 2, "subjects": subjects, "rows_per_subject": 2}
    trainer = DPTrainer(_linear_spec(4), seed=0)
    with pytest.raises(ValidationError, match="subjects in both"):
        trainer.fit(x[:12], y[:12], train_rows=np.arange(7), val_rows=np.arange(7, 12), **fit)
    with pytest.raises(ValidationError, match="exactly the given rows"):
        trainer.fit(
            x[:12],
            y[:12],
            train_rows=np.arange(6),
            val_rows=np.arange(6, 12),
            train_subjects=np.arange(4),  # subject 3 owns rows 6 and 7, given to validate
            val_subjects=np.array([4, 5]),
            **fit,
        )
    with pytest.raises(ValidationError, match="without repeats"):
        trainer.fit(x[:12], y[:12], train_rows=np.arange(8), val_rows=np.arange(6, 12), **fit)
