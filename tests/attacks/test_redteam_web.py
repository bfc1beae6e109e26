"""Red team, round seven: the dashboard (XSS, CSRF, headers, access), Celery fits and
the CLI, attacked over real HTTP as a data scientist and as an anonymous visitor."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, DS_PASSWORD, login, make_ds
from tests.nodes import fresh_postgres_url, running_node
from tests.web.scenario import csrf_of, dashboard, table_fit, upload_table, wait_for
from veil.cli import main

XSS = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
RAW = ("<script>alert", "<img src=x", "onerror=alert(2)>")
PAGES = ["/", "/ledger", "/jobs", "/datasets"]


def _raw(text: str) -> bool:
    return any(r in text for r in RAW)


def _notice(page: httpx.Response) -> str:
    found = re.search(r'id="notice">([^<]*)<', page.text)
    return found.group(1) if found else ""


@pytest.fixture
def world(sqlite_node):
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_table(admin)
    ds = make_ds(admin, sqlite_node, budget=100)
    yield sqlite_node, admin, ds
    ds.close()
    admin.close()


def test_echoed_strings_and_json_in_pages_are_escaped(world) -> None:
    node, admin, ds = world
    # An e-mail that passes the node's validation yet holds a closing script tag: it is
    # the ledger chart's label, inside <script type="application/json">.
    odd = admin.users.create(email='"</script><x>"@lab.org', password=DS_PASSWORD, budget=5)
    other = login(node, odd.email, DS_PASSWORD)
    other.datasets["Tiny"]["x"].statistics(epsilon=0.5)
    ds.datasets["Tiny"]["x"].statistics(epsilon=0.5)
    http = dashboard(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    for path in [*PAGES, "/users"]:
        page = http.get(path)
        assert page.status_code == 200 and "</script><x>" not in page.text, path
    ledger = http.get("/ledger").text
    (blob,) = re.findall(
        r'<script type="application/json" id="epsilon-series">(.*?)</script>', ledger
    )
    assert odd.email in [line["label"] for line in json.loads(blob)]  # intact once parsed
    assert len(re.findall(r"<script", ledger)) == 3  # the blob and two /static scripts
    # Reflected: query strings, path ids, the login form's e-mail, a forged notice cookie.
    for path in [
        f"/ledger?model={XSS[:60]}",
        f"/ledger?kind={XSS[:60]}",
        f"/ledger?since={XSS[:60]}",
        f"/datasets/mock/{XSS}.png",
        "/datasets/mock/" + "%3Cscript%3E" * 400 + ".png",
    ]:
        answer = http.get(path)
        assert answer.status_code < 500 and not _raw(answer.text), path
    cancel = http.post(f"/jobs/{XSS.replace('/', '')}/cancel", data={"csrf": csrf_of(http)})
    assert not _raw(_notice(http.get(cancel.headers["location"])))
    notice = base64.urlsafe_b64encode(json.dumps([False, XSS]).encode()).decode()
    http.cookies.set("veil_notice", notice)
    assert "&lt;script&gt;" in http.get("/").text and not _raw(http.get("/").text)
    with httpx.Client(base_url=node.url) as anonymous:
        page = anonymous.post("/login", data={"email": XSS, "password": "x"})
        assert page.status_code in (401, 422) and not _raw(page.text)
        assert not _raw(anonymous.get("/login", params={"email": XSS, "error": XSS}).text)


def test_every_form_needs_the_token_and_this_origin(world) -> None:
    node, admin, ds = world
    running = table_fit(ds, max_iter=5000, batch_size=4, wait=False, target_epsilon=1.0)
    job_id = running.progress()["job_id"]
    http = dashboard(node, ds.user.email, DS_PASSWORD)
    csrf = csrf_of(http)
    for form, headers in [
        ({}, {}),
        ({"csrf": "0" * 64}, {}),
        ({"csrf": csrf.upper()}, {}),
        ({"csrf": csrf}, {"Origin": "https://evil.example"}),
        ({"csrf": csrf}, {"Origin": "null"}),
    ]:
        answer = http.post(f"/jobs/{job_id}/cancel", data=form, headers=headers)
        assert answer.status_code == 403, (form, headers)
        assert http.post("/logout", data=form, headers=headers).status_code == 403
    assert running.progress()["status"] in ("queued", "running")
    assert not running.progress().get("cancel_requested")
    assert http.get("/").status_code == 200  # still logged in
    # State never changes on GET (a link or an <img> on another site).
    for path in [f"/jobs/{job_id}/cancel", "/logout", f"/users/{ds.user.id}/disable"]:
        assert http.get(path).status_code in (404, 405), path
    # A DS's valid token on the admin's forms.
    for path, form in [
        (f"/users/{ds.user.id}/disable", {}),
        (f"/users/{ds.user.id}/budget", {"budget": "1e9"}),
        ("/users", {"email": "e@x.org", "password": "x" * 9, "budget": "9"}),
    ]:
        assert http.post(path, data={**form, "csrf": csrf}).status_code == 403, path
    assert ds.privacy_budget.total == 100 and not ds.users.me().disabled
    answer = http.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf})
    assert answer.status_code == 303 and "stops after" in _notice(http.get("/jobs"))
    (notice,) = [c for c in answer.headers.get_list("set-cookie") if "veil_notice" in c]
    assert "HttpOnly" in notice and "samesite=strict" in notice.lower() and "Path=/" in notice
    assert running.wait(show=False)["status"] == "cancelled"


def test_login_sessions_logout_and_redirects(world) -> None:
    node, admin, ds = world
    attacker_token = ds._http.token
    with httpx.Client(base_url=node.url, follow_redirects=False) as browser:
        # Fixation: a session cookie planted before login is replaced, never adopted.
        browser.cookies.set("veil_session", attacker_token)
        answer = browser.post(
            "/login?next=https://evil.example",
            data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "next": "//evil.example"},
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/"
        (cookie,) = [c for c in answer.headers.get_list("set-cookie") if "veil_session" in c]
        assert attacker_token not in cookie and "HttpOnly" in cookie and "Path=/" in cookie
        token = cookie.split(";")[0].split("=", 1)[1]
        browser.cookies.clear()
        browser.cookies.set("veil_session", token)
        assert "/users" in browser.get("/").text  # the admin's own session, not the DS's
        for path in ["//evil.example/", "/\\evil.example", "/jobs/", "/%2F%2Fevil.example"]:
            location = browser.get(path).headers.get("location", "")
            assert not re.match(r"(https?:)?[/\\]{2}(?!127\.0\.0\.1)", location), (path, location)
        browser.post("/logout", data={"csrf": csrf_of(browser)})
        assert browser.get("/").headers["location"] == "/login"
    with httpx.Client(base_url=node.url + "/api/v1") as api:  # the session is revoked
        assert api.get("/users/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_headers_and_what_is_outside_the_pages(world) -> None:
    node, admin, ds = world
    http = dashboard(node, ds.user.email, DS_PASSWORD)
    with httpx.Client(base_url=node.url) as anonymous:
        answers = [http.get(p) for p in [*PAGES, "/users", "/ledger?since=x"]]
        answers += [anonymous.get("/login"), anonymous.get("/jobs")]
        for answer in answers:
            csp = answer.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
            assert "script-src" not in csp and "default-src 'self'" in csp  # no inline scripts
            assert answer.headers["x-content-type-options"] == "nosniff"
        for page in answers[:4]:
            assert not re.search(r"<script(?![^>]*\b(src=|type=\"application/json\"))", page.text)
            assert not re.search(r"\son[a-z]+=", page.text)  # no inline handlers either
        # Static files: no way out of the folder, however the dots are written.
        for path in [
            "/static/../pages.py",
            "/static/%2e%2e/pages.py",
            "/static/..%2fpages.py",
            "/static/vendor/..%2f..%2fpages.py",
            "/static/%2e%2e%2f%2e%2e%2fcli.py",
            "/static/..\\pages.py",
            "/static//etc/passwd",
            "/static/%00",
        ]:
            answer = anonymous.get(path)
            assert answer.status_code in (400, 404, 422) and "import" not in answer.text, path
        # Every other answer (JSON, /docs, static files, errors) is never sniffed nor framed.
        others = [anonymous.get(p) for p in ("/api/v1/node", "/docs", "/api/v1/nope")]
        others += [anonymous.get("/api/v1/models"), http.get("/openapi.json")]
        for answer in others:
            assert answer.headers["x-content-type-options"] == "nosniff", answer.url
            assert answer.headers["x-frame-options"] == "DENY", answer.url
    # Mock images: odd ids are a 404 page, never a 500 nor another user's view.
    view = ds.datasets["Tiny"]["x"][0:8]
    other = make_ds(admin, node)
    other_view = other.datasets["Tiny"]["x"][0:8]
    for asset_id in [
        "..%2f..%2fveil.db",
        "%2e%2e",
        "x" * 5000,
        "%C3%A9",
        "%EF%BF%BF",
        view.id,
        other_view.id,
        ds.user.id,
        "%20",
    ]:
        answer = http.get(f"/datasets/mock/{asset_id}.png")
        assert answer.status_code == 404 and "image/png" not in answer.headers["content-type"]


# Celery -----------------------------------------------------------------------------

REDIS_URL = "redis://127.0.0.1:6379/13"


def test_celery_fits_that_are_cancelled_or_odd_end_recorded(tmp_path) -> None:
    redis = pytest.importorskip("redis")
    redis.Redis.from_url(REDIS_URL).flushdb()
    with fresh_postgres_url() as database_url:
        data_dir = tmp_path / "shared"
        with running_node(
            data_dir, database_url=database_url, job_backend="celery", redis_url=REDIS_URL
        ) as node:
            admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
            upload_table(admin)
            ds = make_ds(admin, node, budget=1000)
            raw = httpx.Client(base_url=node.url + "/api/v1", timeout=30)
            raw.headers["Authorization"] = f"Bearer {ds._http.token}"
            # Queued with no worker yet, then cancelled: it ends at once, recorded.
            queued = table_fit(ds, max_iter=5000, batch_size=4, wait=False, target_epsilon=1.0)
            assert raw.post(f"/models/{queued.id}/cancel").status_code == 200
            wait_for(lambda: queued.progress()["status"] == "cancelled", timeout=30)
            # Odd parameters: refused plainly (4xx), or queued for the worker to record.
            x, y = ds.datasets["Tiny"]["x"].id, ds.datasets["Tiny"]["y"].id
            odd = [table_fit(ds, max_iter=1, wait=False) for _ in range(4)]
            for model in odd:
                model.cancel()
                wait_for(lambda m=model: m.progress()["status"] in ("cancelled", "done"))
            cases = [
                {"batch_size": 64},
                {"batch_size": 1, "validation_split": 0.95},
                {"x": x, "y": x, "batch_size": 4},
                {"batch_size": 2**31 - 1},
                {"batch_size": 1, "max_iter": 2**31 - 1},
                {"x": y, "y": x},
            ]
            answers = [
                raw.post(f"/models/{model.id}/fit", json={"x": x, "y": y, **params})
                for model, params in zip(odd + odd[:2], cases, strict=True)
            ]
            assert all(a.status_code in (202, 409, 422) for a in answers), [a.text for a in answers]
            assert sum(a.status_code == 202 for a in answers) >= 2
            env = {
                **os.environ,
                "VEIL_DATA_DIR": str(data_dir),
                "VEIL_DATABASE_URL": database_url,
                "VEIL_REDIS_URL": REDIS_URL,
            }
            worker = subprocess.Popen(
                [sys.executable, "-m", "veil.cli", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                for model in odd:
                    wait_for(
                        lambda m=model: m.progress()["status"] not in ("queued", "running"),
                        timeout=120,
                        every=0.5,
                    )
                running = table_fit(ds, max_iter=5000, batch_size=4, wait=False, target_epsilon=1.0)
                wait_for(lambda: running.progress()["status"] == "running", timeout=120, every=0.5)
                http = dashboard(node, ds.user.email, DS_PASSWORD)
                job_id = running.progress()["job_id"]
                http.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf_of(http)})
                wait_for(
                    lambda: running.progress()["status"] == "cancelled", timeout=120, every=0.5
                )
                assert worker.poll() is None, "the worker died"
            finally:
                worker.terminate()
                worker.wait(timeout=30)
            for model in (queued, *odd, running):
                final = model.progress()
                assert final["status"] in ("cancelled", "done"), final
                assert not final.get("error"), final
            jobs = dashboard(node, ds.user.email, DS_PASSWORD).get("/jobs").text
            assert "Traceback" not in jobs and "Internal error" not in jobs


# The CLI ------------------------------------------------------------------------------


@pytest.fixture
def cli(sqlite_node, monkeypatch, capsys):
    monkeypatch.setenv("VEIL_PASSWORD", ADMIN_PASSWORD)

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = main(["--url", sqlite_node.url, *argv])
        except SystemExit as exc:
            code = exc.code
        return code, capsys.readouterr().err

    return run


def test_cli_odd_arguments_that_are_refused_plainly(cli, tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((10, 2), np.float32))
    for argv in [
        ["datasets", "upload", "A", "--asset", f"x={tmp_path}/missing.npy"],
        ["datasets", "upload", "B", "--asset", f"x={tmp_path}", "--bounds", "x=0,1"],
        ["datasets", "upload", "C", "--asset", f"x={tmp_path}/x.npy", "--bounds", "x=0,1,2"],
        ["datasets", "upload", "a/b?", "--asset", f"x={tmp_path}/x.npy", "--bounds", "x=0,1"],
        ["datasets", "delete", "%00"],
        ["users", "set-budget", "nobody", "abc"],
        ["users", "frobnicate"],
        ["--url", "notaurl", "users", "list"],
    ]:
        code, err = cli(*argv)
        assert code not in (0, None) and "Traceback" not in err and err.strip(), argv


def _cli_case(tmp_path, case: str) -> list[str]:
    np.save(tmp_path / "x.npy", np.zeros((10, 2), np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not an npy file")
    upload = ["datasets", "upload", "D", "--asset", f"x={tmp_path}/x.npy"]
    return {
        "mock-missing": [*upload, "--mock", f"x={tmp_path}/missing.npy"],
        "mock-junk": [*upload, "--mock", f"x={tmp_path}/junk.npy"],
        "bounds-nan": [*upload, "--bounds", "x=nan,1"],
        "budget-nan": ["users", "create", "n@lab.org", "--password", "x" * 9, "--budget", "nan"],
        "budget-inf": ["users", "set-budget", "admin@veil.dev", "1e400"],
        "user-query": ["users", "disable", "?x=1"],
        "user-nul": ["users", "disable", "\x00"],
        "url-bad": ["--url", "http://[::1", "users", "list"],
    }[case]


@pytest.mark.parametrize(
    "case",
    [
        "mock-missing",
        "mock-junk",
        "bounds-nan",
        "budget-nan",
        "budget-inf",
        "user-query",
        "user-nul",
        "url-bad",
    ],
)
def test_cli_odd_arguments_never_raise(cli, tmp_path, case) -> None:
    argv = _cli_case(tmp_path, case)
    try:
        code, err = cli(*argv)
    except Exception as exc:  # noqa: BLE001 - what main once let through
        pytest.fail(f"{argv} raised {type(exc).__name__}: {exc}")
    assert code not in (0, None) and err.strip(), argv


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--port", "99999"],
        ["serve", "--database-url", "x"],
        ["serve", "--data-dir", "/proc/no/such/dir"],
        ["worker", "--concurrency", "-1"],
    ],
)
def test_cli_serve_and_worker_with_bad_options_say_so_in_one_line(tmp_path, argv) -> None:
    env = {**os.environ, "VEIL_DATA_DIR": str(tmp_path / "d"), "VEIL_REDIS_URL": REDIS_URL}
    done = subprocess.run(
        [sys.executable, "-m", "veil.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-400:]
