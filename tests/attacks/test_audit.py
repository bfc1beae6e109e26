"""The empirical audit end to end: the owner plants canaries in a dataset, a data
scientist trains on the node through the public client and publishes the weights; the
audit's lower bound stays under what the ledger charged, unless the node is broken."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from veil import nn
from veil.audit import canary_model, canary_scores, make_canaries
from veil.engine._randomness import SecureRandomness
from veil.privacy.audit import AuditResult, audit_guesses

DELTA = 1e-5


def _audit_on_the_node(node) -> tuple[AuditResult, float]:
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    canaries = make_canaries(canaries=1000, rows=1000, seed=1)
    admin.datasets.upload(
        name="Canaries",
        assets={"x": canaries.x, "y": canaries.y},
        bounds={"x": (-100, 100), "y": (-1000, 1000)},
    )
    ds = make_ds(admin, node, budget=100.0)
    data = ds.datasets["Canaries"]
    model = nn.Model.from_spec(canary_model(canaries))
    model_ptr = model.compile(to=ds)
    before = model_ptr.weights().publish().get()  # untrained: free
    n = canaries.x.shape[0]
    model_ptr.fit(data["x"], data["y"], max_iter=10, batch_size=n // 10, target_epsilon=2.0)
    release = model_ptr.weights().publish()
    charged = ds.privacy_budget.spent
    assert charged == pytest.approx(release.spent_after) and charged <= 2.0
    scores = canary_scores(canaries, before, release.get())
    return audit_guesses(scores, canaries.included, delta=DELTA), charged


def test_the_nodes_training_passes_the_audit(sqlite_node) -> None:
    result, charged = _audit_on_the_node(sqlite_node)
    assert result.epsilon < charged, result


def test_the_audit_catches_a_node_whose_noise_is_off(sqlite_node, monkeypatch) -> None:
    monkeypatch.setattr(
        SecureRandomness, "normal", lambda self, count, device: torch.zeros(count, device=device)
    )
    result, charged = _audit_on_the_node(sqlite_node)
    assert result.epsilon > charged, result
