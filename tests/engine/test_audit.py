"""The empirical audit of DP-SGD: its lower bound stays under the epsilon Veil charges,
and the same audit catches the engine with its noise or its clipping switched off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veil.audit import canary_model, canary_scores, make_canaries
from veil.engine import DPTrainer, _trainer
from veil.engine._randomness import SecureRandomness
from veil.privacy import calibrate_sigma, poisson_gaussian
from veil.privacy.audit import AuditResult, audit_guesses

DELTA = 1e-5
TARGET = 2.0
EPOCHS = 10


def _audit() -> tuple[AuditResult, float]:
    canaries = make_canaries(canaries=1000, rows=1000, seed=0)
    n = canaries.x.shape[0]
    batch = n // 10
    q, steps = batch / n, EPOCHS * int(np.ceil(n / batch))
    sigma = calibrate_sigma(TARGET, lambda s: poisson_gaussian(q, s, steps).epsilon(DELTA))
    charged = poisson_gaussian(q, sigma, steps).epsilon(DELTA)
    trainer = DPTrainer(canary_model(canaries, noise_multiplier=sigma))
    assert trainer.secure
    before = trainer.get_weights()
    trainer.fit(canaries.x, canaries.y, train_rows=np.arange(n), epochs=EPOCHS, batch_size=batch)
    scores = canary_scores(canaries, before, trainer.get_weights())
    return audit_guesses(scores, canaries.included, delta=DELTA, confidence=0.95), charged


def test_the_audit_bound_stays_below_what_veil_charges() -> None:
    result, charged = _audit()
    assert charged <= TARGET
    assert result.epsilon < charged, result


def test_the_audit_catches_dp_sgd_without_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        SecureRandomness, "normal", lambda self, count, device: torch.zeros(count, device=device)
    )
    result, charged = _audit()
    assert result.epsilon > charged, result


def test_the_audit_catches_dp_sgd_with_clipping_too_loose(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clipping at 100 x the norm the noise and the charge assume: a canary's gradient
    then dwarfs the noise, as it would with no clipping at all (which would also make
    this model diverge, leaving no scores to audit). Both ways of clipping are loosened:
    the canary model takes the layer-wise one, vmap models the other."""
    for name in ("clip_and_sum", "clip_layerwise"):
        original = getattr(_trainer, name)
        monkeypatch.setattr(
            _trainer,
            name,
            lambda grads, clip, valid, original=original: original(grads, 100 * clip, valid),
        )
    result, charged = _audit()
    assert result.epsilon > charged, result


ROWS_PER_PERSON = 8


def _subject_audit(*, by_subject: bool) -> tuple[AuditResult, float]:
    """Canaries that are people owning eight identical rows each, trained and charged at
    subject level, or at row level as if each row were a person."""
    canaries = make_canaries(canaries=1000, rows=1000, seed=1, rows_per_canary=ROWS_PER_PERSON)
    n = canaries.x.shape[0]
    units = np.unique(canaries.subject).size if by_subject else n
    batch = units // 10
    q, steps = batch / units, EPOCHS * int(np.ceil(units / batch))
    sigma = calibrate_sigma(TARGET, lambda s: poisson_gaussian(q, s, steps).epsilon(DELTA))
    charged = poisson_gaussian(q, sigma, steps).epsilon(DELTA)
    trainer = DPTrainer(canary_model(canaries, noise_multiplier=sigma))
    before = trainer.get_weights()
    trainer.fit(
        canaries.x,
        canaries.y,
        train_rows=np.arange(n),
        epochs=EPOCHS,
        batch_size=batch,
        subjects=canaries.subject if by_subject else None,
    )
    scores = canary_scores(canaries, before, trainer.get_weights())
    return audit_guesses(scores, canaries.included, delta=DELTA, confidence=0.95), charged


def test_people_with_many_rows_stay_within_the_subject_level_charge() -> None:
    result, charged = _subject_audit(by_subject=True)
    assert charged <= TARGET
    assert result.epsilon < charged, result


def test_a_row_level_charge_does_not_protect_people_with_many_rows() -> None:
    result, charged = _subject_audit(by_subject=False)
    assert result.epsilon > charged, result
