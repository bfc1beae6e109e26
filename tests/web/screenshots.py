"""Screenshots of every dashboard page, for a person to look at (`bash scripts/screenshots`).

Starts a node on SQLite in a temporary folder with the demo datasets, data scientists
who trained, published and left a fit running, then saves one PNG per page, as the
admin and as a data scientist, into a folder (default: screenshots/, not committed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.flows.data import image_data, image_mlp
from tests.nodes import running_node
from tests.web.browser import CHROMIUM, LAUNCH_ARGS, missing_browser
from tests.web.scenario import DS_PASSWORD, wait_for
from veil import nn
from veil.server.demo import ensure_demo_datasets

ADMIN_PAGES = ["/", "/users", "/ledger", "/jobs", "/datasets", "/docs"]
DS_PAGES = ["/", "/ledger", "/jobs", "/datasets", "/users"]


def _wisconsin_fit(ds: veil.Client, *, epochs: int, validation: float = 0.0):  # noqa: ANN202
    model = nn.Model()
    model.add(nn.Rescaling(1 / 4300, input_shape=(None, 30)))
    model.add(nn.Dense(1))
    model.add(nn.Sigmoid())
    model_ptr = model.compile(to=ds, loss=nn.BinaryCrossEntropy(), noise_multiplier=2.0)
    data = ds.datasets["BreastCancerWisconsin"]
    model_ptr.fit(
        data["features"],
        data["labels"],
        max_iter=epochs,
        batch_size=64,
        validation_split=validation,
        wait=False,
    )
    model_ptr.wait(show=False)
    return model_ptr


def _populate(admin: veil.Client, url: str):  # noqa: ANN202 - the ModelPointer left training
    """Datasets, accounts, releases over a few seconds, and a fit left running."""
    images, labels = image_data(n=400)
    public_images, _ = image_data(n=16, seed=7)  # made like the data, not from it: public
    admin.datasets.upload(
        name="Patches",
        description="Synthetic 28 x 28 patches; the owner's mock is drawn the same way.",
        assets={"train_images": images, "train_labels": labels},
        mock={"train_images": public_images},
        bounds={"train_labels": (0, 1)},
    )
    for email, name, budget in [
        ("ana@lab.org", "Ana Data", 12.0),
        ("ben@lab.org", "Ben Model", 6.0),
        ("cy@lab.org", "Cy Former", 2.0),
    ]:
        admin.users.create(email=email, password=DS_PASSWORD, name=name, budget=budget)
    admin.users.disable("cy@lab.org")
    ana = veil.login("ana@lab.org", DS_PASSWORD, url=url, verbose=False)
    ben = veil.login("ben@lab.org", DS_PASSWORD, url=url, verbose=False)
    _wisconsin_fit(ana, epochs=2, validation=0.1).weights().publish()
    time.sleep(1)
    _wisconsin_fit(ben, epochs=1).weights().publish()
    time.sleep(1)
    model_ptr = _wisconsin_fit(ana, epochs=2)
    model_ptr.weights().publish()
    data = ana.datasets["BreastCancerWisconsin"]
    loss, _ = model_ptr.step(data["features"][0:64], data["labels"][0:64])
    loss.publish(epsilon=0.5)
    _wisconsin_fit(ana, epochs=3)  # left unpublished: it sits in ana's cart
    cancelled = image_mlp().compile(to=ben)
    patches = ben.datasets["Patches"]
    cancelled.fit(patches["train_images"], patches["train_labels"], max_iter=200, wait=False)
    cancelled.cancel()
    cancelled.wait(show=False)
    running = image_mlp().compile(to=ben)
    running.fit(
        patches["train_images"], patches["train_labels"], max_iter=500, batch_size=8, wait=False
    )
    wait_for(lambda: running.progress()["step"] > 0)
    return running


def _shoot(page, base: str, paths: list[str], out: Path, prefix: str) -> list[Path]:  # noqa: ANN001
    written = []
    for index, path in enumerate(paths, start=1):
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
        name = path.strip("/") or "overview"
        target = out / f"{prefix}-{index:02d}-{name}.png"
        page.screenshot(path=str(target), full_page=True)
        written.append(target)
    return written


def _log_in(page, base: str, email: str, password: str) -> None:  # noqa: ANN001
    page.goto(base + "/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="screenshots", type=Path)
    args = parser.parse_args(argv)
    reason = missing_browser()
    if reason is not None:
        print(f"cannot take screenshots: {reason}", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    args.folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as data, running_node(Path(data) / "node") as node:
        ensure_demo_datasets(node.ctx)
        admin = veil.login(ADMIN_EMAIL, ADMIN_PASSWORD, url=node.url, verbose=False)
        training = _populate(admin, node.url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
            )
            written = []
            for who, email, password, paths in [
                ("admin", ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_PAGES),
                ("ds", "ana@lab.org", DS_PASSWORD, DS_PAGES),
            ]:
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                page = context.new_page()
                if who == "admin":
                    page.goto(node.url + "/login")
                    page.screenshot(path=str(args.folder / "login.png"))
                    written.append(args.folder / "login.png")
                _log_in(page, node.url, email, password)
                written += _shoot(page, node.url, paths, args.folder, who)
                context.close()
            browser.close()
        training.cancel()
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
