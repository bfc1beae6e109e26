"""The dashboard over real HTTP: sessions, CSRF, who sees what, typed errors as pages."""

from __future__ import annotations

import base64
import re

import httpx
import numpy as np
import pytest

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.web.scenario import (
    DS_PASSWORD,
    csrf_of,
    dashboard,
    publish_small_fit,
    table_fit,
    upload_table,
)
from veil.server.services.budgets import budget_bars
from veil.server.services.node import get_node

PAGES = ["/", "/users", "/ledger", "/jobs", "/datasets"]


@pytest.fixture
def admin(sqlite_node):
    client = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    yield client
    client.close()


def _notice(page: httpx.Response) -> str:
    return re.search(r'id="notice">([^<]*)<', page.text).group(1)


def test_a_login_form_with_a_nul_answers_the_login_page_on_either_database(node) -> None:
    """A NUL in the form's e-mail (which PostgreSQL cannot store, and so refused with
    the API's JSON error while SQLite answered the page) is an unknown e-mail on both."""
    with httpx.Client(base_url=node.url) as anonymous:
        for email in ("a\x00b", ADMIN_EMAIL + "\x00"):
            page = anonymous.post("/login", data={"email": email, "password": ADMIN_PASSWORD})
            assert page.status_code == 401, page.text
            assert page.headers["content-type"].startswith("text/html")
            assert "Unknown e-mail or wrong password" in page.text
            assert "veil_session" not in page.headers.get("set-cookie", "")


def test_pages_need_a_session_and_login_sets_a_strict_httponly_cookie(sqlite_node) -> None:
    with httpx.Client(base_url=sqlite_node.url) as anonymous:
        for path in [*PAGES, "/datasets/mock/x.png"]:
            answer = anonymous.get(path, follow_redirects=False)
            assert answer.status_code == 303 and answer.headers["location"] == "/login", path
        answer = anonymous.post("/users", data={"email": "a@b.org"}, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/login"
        wrong = anonymous.post("/login", data={"email": ADMIN_EMAIL, "password": "nope"})
        assert wrong.status_code == 401 and "Unknown e-mail or wrong password" in wrong.text
        assert "veil_session" not in wrong.headers.get("set-cookie", "")
        elsewhere = anonymous.post(
            "/login",
            data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
            headers={"Origin": "https://evil.example"},
        )
        assert elsewhere.status_code == 403 and "another site" in elsewhere.text
    http = dashboard(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    cookie = http.cookies.jar
    (session,) = [c for c in cookie if c.name == "veil_session"]
    assert session.has_nonstandard_attr("HttpOnly") and session.expires is None
    assert session.get_nonstandard_attr("SameSite").lower() == "strict"
    for path in PAGES:
        page = http.get(path)
        assert page.status_code == 200, (path, page.text)
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert session.value not in page.text  # the token is never in a page, nor a URL
    assert "Anyone can login as an admin" in http.get("/").text
    for junk in ["x", "W1tbW1s=", base64.urlsafe_b64encode(b"[" * 3000).decode(), "%FF"]:
        http.cookies.set("veil_notice", junk)
        assert http.get("/").status_code == 200, junk
    with httpx.Client(base_url=sqlite_node.url, cookies={"veil_session": "forged"}) as forged:
        assert forged.get("/jobs").headers["location"] == "/login"
    http.post("/logout", data={"csrf": csrf_of(http)})
    http.cookies.set("veil_session", session.value)  # a stolen cookie after logout
    assert http.get("/").headers["location"] == "/login"


def test_forms_need_the_pages_csrf_token_and_this_origin(sqlite_node) -> None:
    http = dashboard(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    form = {"email": "x@lab.org", "password": DS_PASSWORD, "budget": "1"}
    for csrf in ["", "0" * 64, "é"]:
        answer = http.post("/users", data={**form, "csrf": csrf})
        assert answer.status_code == 403 and "reload the page" in answer.text
    answer = http.post(
        "/users", data={**form, "csrf": csrf_of(http)}, headers={"Origin": "http://evil.example"}
    )
    assert answer.status_code == 403
    assert "x@lab.org" not in http.get("/users").text
    answer = http.post("/users", data={**form, "csrf": csrf_of(http)})
    assert answer.status_code == 303 and answer.headers["location"] == "/users"
    assert _notice(http.get("/users")) == "Created x@lab.org with a budget of epsilon 1."


def test_the_admin_manages_accounts_and_bad_input_is_a_message_never_a_500(
    sqlite_node, admin
) -> None:
    http = dashboard(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    csrf = csrf_of(http, "/users")
    user = admin.users.create(email="ds@lab.org", password=DS_PASSWORD, budget=2.0)
    admin_id = admin.user.id
    cases = [
        ("/users", {"email": "not-an-email", "password": DS_PASSWORD, "budget": "1"}, "e-mail"),
        ("/users", {"email": "ds@lab.org", "password": DS_PASSWORD, "budget": "1"}, "exists"),
        ("/users", {"email": "y@lab.org", "password": "short", "budget": "1"}, "at least 8"),
        ("/users", {"email": "y@lab.org", "password": DS_PASSWORD, "budget": "inf"}, "finite"),
        (f"/users/{user.id}/budget", {"budget": "-1"}, "budget must be"),
        ("/users/no-such-user/budget", {"budget": "1"}, "No user"),
        (f"/users/{admin_id}/disable", {}, "admin cannot be disabled"),
        ("/jobs/no-such-job/cancel", {}, "No training job"),
    ]
    for path, form, message in cases:
        answer = http.post(path, data={**form, "csrf": csrf})
        assert answer.status_code == 303, (path, answer.text)
        assert message in _notice(http.get(answer.headers["location"])), path
    for path, form in [
        ("/users", {"email": "z@lab.org", "password": DS_PASSWORD, "budget": "lots"}),
        ("/users", {"email": "z@lab.org" * 100, "password": DS_PASSWORD, "budget": "1"}),
        (f"/users/{user.id}/budget", {}),
    ]:
        answer = http.post(path, data={**form, "csrf": csrf})
        assert answer.status_code == 422 and "Invalid request" in answer.text, path
    for query in ["since=yesterday", "until=2026-02-30", "user=" + "u" * 65]:
        answer = http.get(f"/ledger?{query}")
        assert answer.status_code == 422, query
    assert http.get("/datasets/mock/nope.png").status_code == 404
    assert http.post(f"/users/{user.id}/budget", data={"budget": "4.5", "csrf": csrf}).is_redirect
    assert admin.users.list()[1].budget == 4.5
    ds = login(sqlite_node, "ds@lab.org", DS_PASSWORD)
    http.post(f"/users/{user.id}/disable", data={"csrf": csrf})
    assert "(disabled)" in http.get("/users").text
    with pytest.raises(Exception, match="disabled|revoked"):
        ds.privacy_budget  # noqa: B018 - its API token was revoked with the account


def test_a_data_scientist_sees_only_its_own_part(sqlite_node, admin) -> None:
    upload_table(admin)
    mine, other = make_ds(admin, sqlite_node), make_ds(admin, sqlite_node)
    publish_small_fit(other)
    mine_release = publish_small_fit(mine)
    http = dashboard(sqlite_node, mine.user.email, DS_PASSWORD)
    csrf = csrf_of(http)
    running = table_fit(other, max_iter=5000, batch_size=4, wait=False, target_epsilon=1.0)
    job_id = running.progress()["job_id"]
    assert job_id[:8] not in http.get("/jobs").text
    answer = http.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf})
    assert "No training job" in _notice(http.get(answer.headers["location"]))
    running.cancel()
    overview = http.get("/")
    assert 'href="/users"' not in overview.text and mine.user.email in overview.text
    assert "Anyone can login" not in overview.text
    for path in PAGES:
        text = http.get(path).text
        assert other.user.email not in text and admin.user.email not in text, path
    ledger = http.get("/ledger").text
    assert mine_release.id in ledger and len(re.findall(r"data-release=", ledger)) == 1
    # The server refuses, whatever the page shows or hides.
    assert http.get("/users").status_code == 403
    assert http.get(f"/ledger?user={other.user.id}").status_code == 403
    form = {"email": "x@lab.org", "password": DS_PASSWORD, "budget": "9", "csrf": csrf}
    assert http.post("/users", data=form).status_code == 403
    raise_budget = {"budget": "99", "csrf": csrf}
    assert http.post(f"/users/{mine.user.id}/budget", data=raise_budget).status_code == 403
    with httpx.Client(base_url=sqlite_node.url + "/api/v1") as api:
        api.headers["Authorization"] = f"Bearer {mine._http.token}"
        for path in ["/users", "/ledger", f"/ledger/{other.user.id}/releases"]:
            answer = api.get(path)
            assert answer.status_code == 403 and answer.json()["error"] == "PermissionDenied"
    # The dashboard's cookie is no key to the API.
    with httpx.Client(base_url=sqlite_node.url + "/api/v1", cookies=http.cookies) as api:
        assert api.get("/users/me").status_code == 401
    assert running.wait(show=False)["status"] == "cancelled"


def test_budget_bars_show_the_cart_of_unpublished_models(sqlite_node, admin) -> None:
    upload_table(admin)
    ds = make_ds(admin, sqlite_node, budget=50.0)
    publish_small_fit(ds)
    unpublished = table_fit(ds, max_iter=2).progress()["cart"]
    with sqlite_node.ctx.db.session() as session:
        (bar,) = budget_bars(session, delta=get_node(session).delta, user_id=ds.user.id)
    budget = ds.privacy_budget
    assert bar.spent == pytest.approx(budget.spent) and bar.spent > 0
    assert bar.cart == pytest.approx(unpublished) and bar.cart > 0
    assert bar.left == pytest.approx(50.0 - bar.spent - bar.cart)
    page = dashboard(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD).get("/users").text
    assert f"<b>{bar.cart:.4g}</b> in carts" in page


def test_datasets_show_public_facts_and_mocks_never_private_values(sqlite_node, admin) -> None:
    private = np.full((40, 3), 123456.75, dtype=np.float32)
    images = np.full((40, 1, 16, 16), 200, dtype=np.uint8)
    admin.datasets.upload(
        name="Secret",
        description="private values that must not show",
        assets={"x": private, "images": images, "y": np.arange(40) % 2},
        mock={"x": np.zeros((5, 3), np.float32), "images": np.zeros((5, 1, 16, 16), np.uint8)},
        bounds={"y": (0, 1)},
    )
    ds = make_ds(admin, sqlite_node)
    http = dashboard(sqlite_node, ds.user.email, DS_PASSWORD)
    page = http.get("/datasets").text
    assert "Secret" in page and "[40, 3]" in page and "float32" in page
    assert "Privacy unit: the row" in page
    assert "123456" not in page and "1.235e+05" not in page
    (src,) = re.findall(r'src="(/datasets/mock/[^"]+\.png)"', page)
    png = http.get(src)
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    Image = pytest.importorskip("PIL.Image")
    import io

    pixels = np.asarray(Image.open(io.BytesIO(png.content)))
    assert pixels.max() == 255 and pixels[:, :64].max() == 0  # the owner's black mock, not 200s
    x_id = ds.datasets["Secret"]["x"].id
    assert http.get(f"/datasets/mock/{x_id}.png").status_code == 404


def test_docs_are_served_by_the_node(sqlite_node) -> None:
    with httpx.Client(base_url=sqlite_node.url) as http:
        page = http.get("/docs")
        assert page.status_code == 200
        # As strict as the dashboard's, but for Swagger UI's one inline script (by hash).
        policy = dict(
            d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";")
        )
        assert policy["default-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
        script = policy["script-src"].split()
        assert script[0] == "'self'" and all(s.startswith("'sha256-") for s in script[1:])
        assert len(script) == 2 and "unsafe" not in policy["script-src"]
        assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
        assert assets and all(a.startswith("/static/vendor/swagger-ui/") for a in assets), assets
        assert "https://" not in page.text and "validatorUrl" in page.text
        for asset in assets:
            assert http.get(asset).status_code == 200, asset
        assert http.get("/openapi.json").json()["info"]["title"] == "Veil domain node"
        assert not any(
            p.startswith(("/login", "/users")) for p in http.get("/openapi.json").json()["paths"]
        )
        assert http.get("/redoc").status_code == 404
