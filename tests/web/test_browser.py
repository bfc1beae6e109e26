"""The dashboard in a real browser (headless Chromium) against a real node."""

from __future__ import annotations

import re

import pytest

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.web.scenario import (
    DS_PASSWORD,
    publish_small_fit,
    start_long_fit,
    upload_images,
    upload_table,
    wait_for,
)

expect = pytest.importorskip("playwright.sync_api").expect


def _log_in(page, node, email: str, password: str) -> None:  # noqa: ANN001
    page.goto(node.url + "/")
    expect(page).to_have_url(re.compile(r"/login$"))
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    expect(page).to_have_url(node.url + "/")


def _steps(job) -> int:  # noqa: ANN001 - a locator of a job's row
    return int(re.search(r"step (\d+)/", job.locator(".steps").inner_text()).group(1))


def _only_the_node(seen, node, *, refused: int = 0) -> None:  # noqa: ANN001
    """No script error, nothing asked of another host; `refused` pages answered 403."""
    assert (
        seen.errors
        == ["Failed to load resource: the server responded with a status of 403 (Forbidden)"]
        * refused
    )
    assert all(url.startswith(node.url + "/") for url in seen.requests), seen.requests


def test_the_admin_runs_the_node_from_the_dashboard(sqlite_node, browser_page) -> None:
    page, seen = browser_page
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=200)
    _log_in(page, sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator(".notice.warn")).to_contain_text("password is still the default")

    page.click("nav >> text=Users")
    create = page.locator("form.create")
    create.locator("input[name=email]").fill("ds@lab.org")
    create.locator("input[name=name]").fill("Dana Scientist")
    create.locator("input[name=password]").fill(DS_PASSWORD)
    create.locator("input[name=budget]").fill("20")
    create.locator("button").click()
    notice = page.locator("#notice")
    expect(notice).to_have_text("Created ds@lab.org with a budget of epsilon 20.")
    row = page.locator("tr[data-user='ds@lab.org']")
    row.locator("input[name=budget]").fill("40")
    row.locator("button", has_text="Set").click()
    expect(notice).to_have_text("ds@lab.org now has a budget of epsilon 40.")
    expect(row.locator(".figures")).to_contain_text("40 left of 40")

    ds = veil.login("ds@lab.org", DS_PASSWORD, url=sqlite_node.url, verbose=False)
    model_ptr = start_long_fit(ds)
    page.click("nav >> text=Jobs")
    job = page.locator("#active-jobs tr.job")
    expect(job.locator(".status")).to_have_text("running")
    expect(job).to_contain_text("ds@lab.org")
    first = wait_for(lambda: _steps(job))  # the page refreshes itself while the job runs
    wait_for(lambda: _steps(job) > first)
    job.locator("button", has_text="Cancel").click()
    expect(notice).to_contain_text("stops after its current step")
    ended = page.locator("#ended-jobs tr.job").first
    expect(ended.locator(".status")).to_have_text("cancelled", timeout=30_000)
    assert _steps(ended) > first

    page.click("nav >> text=Ledger")
    expect(page.locator("tr[data-release]")).to_have_count(0)
    published = model_ptr.weights().publish()
    release = page.locator(f"tr[data-release='{published.id}']")
    expect(release).to_be_visible(timeout=20_000)  # without a reload
    expect(release).to_contain_text("ds@lab.org")
    expect(release).to_contain_text("weights")
    expect(release.locator("td.num").first).to_have_text(f"{published.cost:.4g}")
    lines = page.evaluate("Chart.getChart('epsilon-chart').data.datasets.map(d => d.label)")
    assert lines == ["ds@lab.org"]

    page.click("nav >> text=Datasets")
    image = page.locator("td.preview img")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    page.click("nav >> text=Overview")
    expect(page.locator(".cards")).to_contain_text("1 data scientists")
    _only_the_node(seen, sqlite_node)


def test_a_data_scientist_sees_none_of_the_admin_pages(sqlite_node, browser_page) -> None:
    page, seen = browser_page
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_table(admin)
    ds, other = make_ds(admin, sqlite_node), make_ds(admin, sqlite_node)
    publish_small_fit(other)
    mine = publish_small_fit(ds)
    _log_in(page, sqlite_node, ds.user.email, DS_PASSWORD)
    expect(page.locator("h1")).to_have_text("Your privacy budget")
    expect(page.locator(".budget .figures")).to_contain_text("left of 10")
    assert page.locator("nav a").all_inner_texts() == [
        "Overview",
        "Ledger",
        "Jobs",
        "Datasets",
        "API",
    ]
    assert page.locator(".notice.warn").count() == 0

    answer = page.goto(sqlite_node.url + "/users")
    assert answer.status == 403
    expect(page.locator(".notice.bad")).to_contain_text("Only the node's admin may do this")
    page.goto(sqlite_node.url + "/ledger")
    expect(page.locator("tr[data-release]")).to_have_count(1)
    expect(page.locator(f"tr[data-release='{mine.id}']")).to_be_visible()
    assert other.user.email not in page.content()
    answer = page.goto(f"{sqlite_node.url}/ledger?user={other.user.id}")
    assert answer.status == 403

    bearer = {"Authorization": f"Bearer {ds._http.token}"}
    for path in ["/api/v1/users", "/api/v1/ledger"]:
        assert page.request.get(sqlite_node.url + path, headers=bearer).status == 403
        assert page.request.get(sqlite_node.url + path).status == 401  # the cookie is no key
    _only_the_node(seen, sqlite_node, refused=2)


def test_the_api_docs_work_offline(sqlite_node, browser_page) -> None:
    page, seen = browser_page
    blocked: list[str] = []

    def offline(route) -> None:  # noqa: ANN001
        if route.request.url.startswith(sqlite_node.url + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.context.route("**/*", offline)
    page.goto(sqlite_node.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Veil domain node")
    expect(page.locator(".opblock-tag-section").first).to_be_visible()
    assert blocked == []
    _only_the_node(seen, sqlite_node)
