"""Accounts over real HTTP: login, default admin, tokens, budgets, throttling."""

from __future__ import annotations

import time

import httpx
import pytest

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, DS_PASSWORD, login, make_ds
from tests.nodes import running_node


def test_login_announces_node_and_default_password_warning(node, capsys) -> None:
    client = veil.login(email=ADMIN_EMAIL, password=ADMIN_PASSWORD, url=node.url)
    out = capsys.readouterr().out
    assert f"Connecting to 127.0.0.1:{node.port}... done!" in out
    assert f"Logging into {client.node_name}... done!" in out
    assert (
        "Anyone can login as an admin to your node right now because your password is still "
        "the default!" in out
    )
    assert "_" in client.node_name and client.node_name == client.node["name"]


def test_node_name_survives_restart(tmp_path) -> None:
    with running_node(tmp_path / "n") as first:
        name = login(first, ADMIN_EMAIL, ADMIN_PASSWORD).node_name
    with running_node(tmp_path / "n") as second:
        assert login(second, ADMIN_EMAIL, ADMIN_PASSWORD).node_name == name


def test_default_password_refused_from_a_remote_address(tmp_path) -> None:
    # The node sits behind a reverse proxy on loopback that reports the real caller.
    with running_node(tmp_path / "n", forwarded_allow_ips="127.0.0.1") as n:
        remote = {"X-Forwarded-For": "203.0.113.9"}
        with httpx.Client(base_url=n.url + "/api/v1", headers=remote) as http:
            answer = http.post(
                "/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
            )
            assert answer.status_code == 403 and "default password" in answer.json()["message"]
            admin = login(n, ADMIN_EMAIL, ADMIN_PASSWORD)  # from loopback: allowed
            admin.change_password(old_password=ADMIN_PASSWORD, new_password="a-much-better-one")
            answer = http.post(
                "/auth/login", json={"email": ADMIN_EMAIL, "password": "a-much-better-one"}
            )
            assert answer.status_code == 200 and not answer.json()["warnings"]


def test_custom_admin_password_has_no_warning(tmp_path, capsys) -> None:
    with running_node(tmp_path / "n", admin_password="s3cret-admin-pw") as n:
        capsys.readouterr()
        veil.login(ADMIN_EMAIL, "s3cret-admin-pw", url=n.url)
        assert "Anyone can login" not in capsys.readouterr().out


def test_admin_manages_data_scientists(admin, node) -> None:
    created = admin.users.create(email="Ada@Lab.org", password=DS_PASSWORD, name="Ada", budget=2.5)
    assert (
        created.email == "ada@lab.org"
        and created.budget == 2.5
        and created.role == "data_scientist"
    )
    assert {u.email for u in admin.users.list()} == {ADMIN_EMAIL, "ada@lab.org"}
    assert admin.users.set_budget("ada@lab.org", 4.0).budget == 4.0
    assert "ada@lab.org" in repr(admin.users)
    ds = login(node, "ada@lab.org", DS_PASSWORD)
    admin.users.disable(created.id)
    with pytest.raises(veil.AuthenticationError):
        ds.users.me()
    with pytest.raises(veil.AuthenticationError):
        login(node, "ada@lab.org", DS_PASSWORD)


def test_bad_user_input_is_a_typed_error(admin) -> None:
    with pytest.raises(veil.ValidationError, match="e-?mail"):
        admin.users.create(email="not-an-email", password=DS_PASSWORD, budget=1.0)
    with pytest.raises(veil.ValidationError, match="at least 8"):
        admin.users.create(email="a@b.org", password="short", budget=1.0)
    with pytest.raises(veil.ValidationError, match="budget"):
        admin.users.create(email="a@b.org", password=DS_PASSWORD, budget=-1.0)
    admin.users.create(email="a@b.org", password=DS_PASSWORD, budget=1.0)
    with pytest.raises(veil.Conflict):
        admin.users.create(email="a@b.org", password=DS_PASSWORD, budget=1.0)
    with pytest.raises(veil.NotFound):
        admin.users.set_budget("nobody@b.org", 1.0)


def test_data_scientist_cannot_manage_accounts_or_its_budget(admin, node) -> None:
    ds = make_ds(admin, node, budget=1.0)
    with pytest.raises(veil.PermissionDenied):
        ds.users.set_budget(ds.user.id, 100.0)
    with pytest.raises(veil.PermissionDenied):
        ds.users.create(email="x@y.org", password=DS_PASSWORD, budget=5)
    with pytest.raises(veil.PermissionDenied):
        ds.users.list()
    assert ds.users.me().budget == 1.0


def test_logout_revokes_the_token(admin, node) -> None:
    ds = make_ds(admin, node)
    token = ds._http.token
    ds.logout()
    ds._http.token = token
    with pytest.raises(veil.AuthenticationError, match="revoked"):
        ds.users.me()


def test_expired_token_is_refused(tmp_path) -> None:
    with running_node(tmp_path / "n", token_ttl_seconds=1) as n:
        admin = login(n, ADMIN_EMAIL, ADMIN_PASSWORD)
        time.sleep(1.2)
        with pytest.raises(veil.AuthenticationError, match="expired"):
            admin.users.me()


def test_tokens_are_stored_hashed(admin, node) -> None:
    from sqlalchemy import select

    from veil.server.db.tables.accounts import TokenRow

    with node.ctx.db.session() as session:
        stored = list(session.scalars(select(TokenRow.token_hash)))
    assert admin._http.token not in stored and len(stored) == 1


def test_unknown_email_and_wrong_password_answer_alike(admin, node) -> None:
    make_ds(admin, node)
    timings = {}
    messages = {}
    for label, email in (("unknown", "nobody@lab.org"), ("wrong", "ds0@lab.org")):
        start = time.perf_counter()
        with pytest.raises(veil.AuthenticationError) as err:
            login(node, email, "wrong-password")
        timings[label] = time.perf_counter() - start
        messages[label] = str(err.value)
    assert messages["unknown"] == messages["wrong"]


def test_repeated_failures_are_throttled(sqlite_node) -> None:
    for _ in range(5):
        with pytest.raises(veil.AuthenticationError):
            login(sqlite_node, ADMIN_EMAIL, "wrong-password")
    with pytest.raises(veil.RateLimited):
        login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)


def test_malformed_requests_get_4xx_not_500(node) -> None:
    with httpx.Client(base_url=node.url + "/api/v1") as http:
        assert http.post("/auth/login", content=b"{not json").status_code == 422
        assert http.post("/auth/login", json={"email": 5}).status_code == 422
        answer = http.post("/auth/login", json={"email": "a@b.c", "password": "x", "extra": 1})
        assert answer.status_code == 422 and answer.json()["error"] == "ValidationError"
        assert http.get("/users", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert http.get("/no/such/thing").status_code == 404
