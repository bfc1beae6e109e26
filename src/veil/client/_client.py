"""`veil.login()` and the `Client` a data scientist or an admin holds."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import httpx

from veil.client._datasets import DatasetsView
from veil.client._http import Http
from veil.client._models import ModelsAPI
from veil.client._releases import Ledger, LedgerEntry, PrivacyBudget, Published, Releases
from veil.client._users import Usage, User, UsersAPI

__all__ = ["Client", "login"]


class Client:
    """A logged-in session with one domain node."""

    def __init__(
        self, http: Http, *, node_name: str, user: User, warnings: Sequence[str] = ()
    ) -> None:
        self._http = http
        self.node_name = node_name
        self.user = user
        self.warnings = list(warnings)  # what the node said at login (printed if verbose)

    @property
    def users(self) -> UsersAPI:
        return UsersAPI(self._http)

    @property
    def datasets(self) -> DatasetsView:
        return DatasetsView(self._http)

    @property
    def models(self) -> ModelsAPI:
        return ModelsAPI(self._http)

    @property
    def privacy_budget(self) -> PrivacyBudget:
        """Your epsilon budget, what your releases spent, and what is left; `.plot()` it."""
        return PrivacyBudget.from_json(self._http.get("/budget"), http=self._http)

    @property
    def usage(self) -> Usage:
        """What you hold (models, drafts, jobs, private objects and their bytes) against
        each of this node's limits on one user."""
        return Usage.from_json(self._http.get("/users/me/usage"))

    @property
    def releases(self) -> Releases:
        """Everything you published, oldest first; `releases[-1].get()` downloads again."""
        return Releases([Published.from_json(self._http, r) for r in self._http.get("/releases")])

    @property
    def ledger(self) -> Ledger:
        """Every account's budget, epsilon spent and releases (admin only)."""
        entries = [LedgerEntry.from_json(e) for e in self._http.get("/ledger")]
        return Ledger(self._http, entries)

    @property
    def node(self) -> dict[str, Any]:
        """The node's name, version, delta and limits."""
        return self._http.get("/node")

    def update_node(
        self,
        *,
        delta: float | None = None,
        max_params: int | None = None,
        max_flops: int | None = None,
        max_fit_steps: int | None = None,
        max_running_jobs: int | None = None,
        max_active_jobs: int | None = None,
        max_models: int | None = None,
        max_drafts: int | None = None,
        max_objects: int | None = None,
        max_object_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Set the node's delta, model size limits, the most steps one fit may plan, the
        most jobs one user may run at once, and what one user may hold: jobs queued or
        running, models, uncompiled drafts, private objects and their bytes (admin only).
        A user at a limit is refused with `QuotaExceeded`; lowering one deletes nothing."""
        body = {
            "delta": delta,
            "max_params": max_params,
            "max_flops": max_flops,
            "max_fit_steps": max_fit_steps,
            "max_running_jobs": max_running_jobs,
            "max_active_jobs": max_active_jobs,
            "max_models": max_models,
            "max_drafts": max_drafts,
            "max_objects": max_objects,
            "max_object_bytes": max_object_bytes,
        }
        return self._http.patch("/node", json={k: v for k, v in body.items() if v is not None})

    def change_password(self, *, old_password: str, new_password: str) -> None:
        self._http.post(
            "/auth/password", json={"old_password": old_password, "new_password": new_password}
        )

    def logout(self) -> None:
        """Revoke this session's token on the node."""
        self._http.post("/auth/logout")
        self._http.token = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<veil.Client {self.user.email} @ {self.node_name} ({self._http.base_url})>"


def login(
    email: str,
    password: str,
    *,
    host: str = "localhost",
    port: int = 8081,
    url: str | None = None,
    transport: httpx.BaseTransport | None = None,
    verbose: bool = True,
) -> Client:
    """Log into a domain node and return a `Client`.

    `url` (e.g. "http://node.example:8081") overrides host and port; `transport` lets
    tests run the node in-process.
    """
    base_url = url or f"http://{host}:{port}"
    where = base_url.split("://", 1)[-1]
    _say(verbose, f"Connecting to {where}...")
    http = Http(base_url, transport=transport)
    try:
        http.get("/node")
        _say(verbose, " done! \t")
        answer = http.post("/auth/login", json={"email": email, "password": password})
    except Exception:
        http.close()
        _say(verbose, "\n")
        raise
    http.token = answer["token"]
    _say(verbose, f"Logging into {answer['node_name']}... done!\n")
    warnings = answer.get("warnings", [])
    for warning in warnings:
        _say(verbose, f"\n{warning}\n")
    return Client(
        http,
        node_name=answer["node_name"],
        user=User.from_json(answer["user"]),
        warnings=warnings,
    )


def _say(verbose: bool, text: str) -> None:
    if verbose:
        sys.stdout.write(text)
        sys.stdout.flush()
