"""In a notebook: tables as HTML, the spending plot, and a progress bar without ipywidgets."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from veil import PrivacyBudget, nn


@pytest.fixture
def spent(sqlite_node):
    """The admin and a data scientist who published the weights of a small fit once."""
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    rng = np.random.default_rng(0)
    admin.datasets.upload(
        name="Tiny",
        description="four features, a label",
        assets={"x": rng.uniform(0, 1, (64, 4)).astype(np.float32), "y": rng.integers(0, 2, 64)},
        bounds={"x": (0, 1), "y": (0, 1)},
    )
    ds = make_ds(admin, sqlite_node, budget=5.0)
    model = nn.Model()
    model.add(nn.Dense(1, input_shape=(None, 4)))
    model.add(nn.Sigmoid())
    model_ptr = model.compile(to=ds, loss=nn.BinaryCrossEntropy())
    data = ds.datasets["Tiny"]
    model_ptr.fit(data["x"], data["y"], max_iter=1, batch_size=16, wait=False)
    model_ptr.wait(show=False)
    model_ptr.weights().publish()
    return admin, ds


def test_tables_render_as_html(spent) -> None:
    admin, ds = spent
    budget = ds.privacy_budget
    for shown, expected in [
        (ds.datasets, "Tiny"),
        (admin.users, ds.user.email),
        (ds.releases, "weights"),
        (admin.ledger, ds.user.email),
        (budget, f"{budget.spent:.4g}"),
    ]:
        text = shown._repr_html_()
        assert text.startswith("<table>") and expected in text, (shown, text)
    assert "<th>Remaining</th>" in budget._repr_html_()


def test_budget_plot_draws_spending_over_time(spent) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    _, ds = spent
    budget = ds.privacy_budget
    ax = budget.plot()
    spending, limit = ax.get_lines()
    assert spending.get_ydata()[0] == 0.0
    assert spending.get_ydata()[-1] == pytest.approx(budget.spent) and budget.spent > 0
    assert list(limit.get_ydata()) == [5.0, 5.0]
    assert "delta=1e-05" in ax.get_ylabel()


def test_budget_plot_names_the_missing_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    budget = PrivacyBudget(total=1.0, spent=0.0, remaining=1.0, delta=1e-5, _http=object())
    with pytest.raises(ImportError, match=r"matplotlib, which is not installed: pip install"):
        budget.plot()


NOTEBOOK_WITHOUT_IPYWIDGETS = """
import sys, types
sys.modules["ipykernel"] = types.ModuleType("ipykernel")
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
ipython = types.ModuleType("IPython")
ipython.get_ipython = lambda: types.SimpleNamespace()
sys.modules["IPython"] = ipython
sys.modules["ipywidgets"] = None
from veil.client import _models
bar = _models.tqdm(total=3, unit="step")
bar.n = 3
bar.refresh()
bar.close()
print(type(bar).__module__)
"""


def test_the_progress_bar_works_in_a_notebook_without_ipywidgets() -> None:
    done = subprocess.run(
        [sys.executable, "-c", NOTEBOOK_WITHOUT_IPYWIDGETS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "notebook" not in done.stdout  # the text bar, not the widget that needs them
    assert "3/3" in done.stderr
