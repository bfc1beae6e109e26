"""Ten small fits on one node: its memory must not grow from one fit to the next.

The node runs in this process (uvicorn in a thread, the embedded runner, SQLite), so
its resident memory is this process's. A leak (a cache of trainers or live models, a
memory map kept open) would add its size at every fit; allocator noise does not.
"""

from __future__ import annotations

import gc

import numpy as np

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from veil import nn

FITS = 10
SETTLE = 3  # the first fits warm caches, imports and allocator arenas
TOLERANCE_MB = 16.0


def _rss_mb() -> float:
    """This process's resident memory, from Linux's /proc (where the tests run)."""
    gc.collect()
    for line in open("/proc/self/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_ten_fits_do_not_grow_the_node(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 30)).astype(np.float32)  # 2.4 MB: a leak of it shows
    y = (x[:, 0] > 0).astype(np.float32)[:, None]
    admin.datasets.upload(
        name="Memory", assets={"x": x, "y": y}, bounds={"x": (-9, 9), "y": (0, 1)}
    )
    ds = make_ds(admin, sqlite_node, budget=1e9)
    data = ds.datasets["Memory"]
    rss = []
    for _ in range(FITS):
        model = nn.Model()
        model.add(nn.Dense(64, activation="relu", input_shape=(None, 30)))
        model.add(nn.Dense(1))
        model.add(nn.Sigmoid())
        model_ptr = model.compile(to=ds, loss=nn.BinaryCrossEntropy(), optimizer=nn.Adam())
        model_ptr.fit(data["x"], data["y"], max_iter=1, batch_size=5_000, target_epsilon=50.0)
        model_ptr.wait(show=False)
        rss.append(_rss_mb())
    growth = rss[-1] - rss[SETTLE - 1]
    print(f"RSS after each fit (MB): {[round(r, 1) for r in rss]}")
    assert growth <= TOLERANCE_MB, f"RSS after each fit (MB): {[round(r) for r in rss]}"
