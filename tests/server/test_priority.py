"""A login is not slowed by the trainings sharing the node's cores: training threads run
at a lower priority, and password hashes cost what OWASP recommends."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
from argon2 import PasswordHasher
from sqlalchemy import select

from tests.conftest import DS_PASSWORD, login
from tests.flows.data import image_mlp, upload_images
from veil.server.compute import COMPUTE_NICE
from veil.server.db.tables.accounts import UserRow


def _nice_of(prefix: str) -> set[int]:
    return {
        os.getpriority(os.PRIO_PROCESS, t.native_id)
        for t in threading.enumerate()
        if t.name.startswith(prefix) and t.native_id is not None
    }


def test_steps_and_fits_compute_on_lower_priority_threads(node, admin, ds) -> None:
    upload_images(admin, n=40)
    data = ds.datasets["Patches"]
    model_ptr = image_mlp().compile(to=ds)
    model_ptr.step(data["train_images"][0:8], data["train_labels"][0:8])
    model_ptr.evaluate(data["train_images"][0:8], data["train_labels"][0:8], epsilon=1.0)
    model_ptr.fit(data["train_images"], data["train_labels"], max_iter=1, batch_size=8)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert _nice_of("veil-compute_") == {max(base, COMPUTE_NICE)}
    assert _nice_of("veil-job_") == {max(base, COMPUTE_NICE)}
    assert _nice_of("AnyIO worker thread") == {base}  # the API's threads keep the default


def test_an_old_hash_is_redone_with_the_current_parameters(node, admin, ds) -> None:
    ctx = node.ctx
    old = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4).hash(DS_PASSWORD)
    with ctx.db.write_session() as session:
        user = session.scalars(select(UserRow).where(UserRow.email == ds.user.email)).one()
        user.password_hash = old
        session.commit()
    login(node, ds.user.email, DS_PASSWORD)  # still verifies
    with ctx.db.session() as session:
        stored = session.scalars(select(UserRow).where(UserRow.email == ds.user.email)).one()
    assert stored.password_hash != old and "m=19456,t=2,p=1" in stored.password_hash
    login(node, ds.user.email, DS_PASSWORD)
    assert np.isfinite(ds.privacy_budget.remaining)


def test_a_node_imports_what_its_first_optimizer_needs_in_the_background() -> None:
    """The first model compiled after a start would wait ~1 s for `torch._dynamo`; the
    node imports it on a background thread at start (checked in a fresh interpreter)."""
    script = (
        "import sys, torch\n"
        "from veil.server.compute import preload_torch\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "thread = preload_torch()\n"
        "assert thread.daemon and thread.name == 'veil-preload'\n"
        "thread.join()\n"
        "assert 'torch._dynamo' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
