"""Problem 4 of issue 8: throttling that cannot be turned against others.

Failures on one account slow down that account only (from that address, then from
everywhere but the addresses it logged in from), never another account nor the admin;
password changes are throttled alike, and a change ends the account's other sessions.
"""

from __future__ import annotations

import httpx
import pytest

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, DS_PASSWORD, login, make_ds
from tests.nodes import running_node
from veil.server.services import throttle as throttle_module
from veil.server.services.throttle import LoginThrottle


@pytest.fixture
def slow_node(tmp_path):
    """A node whose first backoff outlasts the test's own slowness (argon2 on busy CPUs)."""
    with running_node(tmp_path / "node", login_backoff_seconds=120) as node:
        yield node


def test_failures_on_one_account_never_lock_out_another(slow_node) -> None:
    admin = login(slow_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    victim = make_ds(admin, slow_node)
    bystander = make_ds(admin, slow_node)
    for _ in range(8):  # all from this one address, as through a shared NAT
        with pytest.raises((veil.AuthenticationError, veil.RateLimited)):
            login(slow_node, victim.user.email, "wrong-password")
    with pytest.raises(veil.RateLimited) as limited:
        login(slow_node, victim.user.email, DS_PASSWORD)
    assert limited.value.detail["retry_after"] > 0
    # the same address, other accounts: as if nothing happened
    assert login(slow_node, bystander.user.email, DS_PASSWORD).user.email
    assert login(slow_node, ADMIN_EMAIL, ADMIN_PASSWORD).user.role == "admin"
    with pytest.raises(veil.AuthenticationError):  # unknown accounts are throttled apart too
        login(slow_node, "nobody@lab.org", "wrong-password")


def test_password_changes_are_throttled(slow_node) -> None:
    admin = login(slow_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    ds = make_ds(admin, slow_node)
    for _ in range(5):
        with pytest.raises(veil.AuthenticationError, match="current password is wrong"):
            ds.change_password(old_password="guess-1234", new_password="another-one-1")
    with pytest.raises(veil.RateLimited):  # even the right one waits now
        ds.change_password(old_password=DS_PASSWORD, new_password="another-one-1")
    answer = httpx.post(
        slow_node.url + "/api/v1/auth/password",
        json={"old_password": "guess", "new_password": "another-one-1"},
        headers={"Authorization": f"Bearer {ds._http.token}"},
    )
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1


def test_a_password_change_ends_the_other_sessions(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    laptop = make_ds(admin, sqlite_node)
    stolen = login(sqlite_node, laptop.user.email, DS_PASSWORD)
    laptop.change_password(old_password=DS_PASSWORD, new_password="a-new-password")
    with pytest.raises(veil.AuthenticationError, match="revoked"):
        stolen.privacy_budget  # noqa: B018 - a request with the old session's token
    assert laptop.privacy_budget.total == 10.0  # the session that changed it goes on
    assert login(sqlite_node, laptop.user.email, "a-new-password").user.email


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_backoff_doubles_and_addresses_that_logged_in_are_not_locked_out(monkeypatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(throttle_module, "time", clock)
    throttle = LoginThrottle(allowed=2, backoff_seconds=1.0, max_backoff_seconds=8.0)
    throttle.succeed("owner@lab.org", "10.0.0.1")  # the owner's usual address
    waits = []
    for _ in range(6):
        throttle.fail("owner@lab.org", "198.51.100.7")
        try:
            throttle.check("owner@lab.org", "198.51.100.7")
            waits.append(0.0)
        except veil.RateLimited as limited:
            waits.append(limited.detail["retry_after"])
    assert waits == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]  # doubling, capped
    clock.now += 8.0
    throttle.check("owner@lab.org", "198.51.100.7")  # waited long enough
    # guesses spread over many addresses: the account is slowed down everywhere...
    for n in range(8):
        throttle.fail("owner@lab.org", f"203.0.113.{n}")
    with pytest.raises(veil.RateLimited):
        throttle.check("owner@lab.org", "192.0.2.1")
    # ...but not from where its owner logged in before, and no other account at all
    throttle.check("owner@lab.org", "10.0.0.1")
    throttle.check("someone-else@lab.org", "203.0.113.1")
    clock.now += 9.0  # quiet for longer than the longest backoff: forgotten
    throttle.fail("owner@lab.org", "203.0.113.1")
    throttle.check("owner@lab.org", "203.0.113.1")
