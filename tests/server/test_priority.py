"""A login is not slowed by the trainings sharing the node's cores: training threads run
at a lower priority, and password hashes cost what OWASP recommends."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

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


def test_a_data_scientists_login_imports_what_the_first_optimizer_needs() -> None:
    """The first model compiled in a process would wait ~1.1 s for `torch._dynamo`
    (torch's optimizers import it): a data scientist's login starts that import in the
    background, once; the node's start and an admin's login do not (a node that only
    stores data never pays its memory). In a fresh interpreter, where nothing imported
    it yet."""
    script = textwrap.dedent(
        """
        import sys, tempfile
        from pathlib import Path
        from tests.conftest import login, make_ds
        from tests.nodes import running_node
        from veil.server import compute

        with tempfile.TemporaryDirectory() as d, running_node(Path(d)) as node:
            secret = node.settings.admin_password.get_secret_value()
            admin = login(node, node.settings.admin_email, secret)
            assert "torch._dynamo" not in sys.modules and compute._preload is None
            make_ds(admin, node)  # logs the new data scientist in
            thread = compute._preload
            assert thread is not None and thread.name == "veil-preload" and thread.daemon
            assert compute.preload_torch() is thread  # once per process
            thread.join()
            assert "torch._dynamo" in sys.modules
        """
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, cwd=root)
