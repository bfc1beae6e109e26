"""Accounts: the admin's view of them (`client.users`), and what each user holds
against the node's per-user limits (`client.usage`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from veil.client._http import Http, segment
from veil.client._table import Table

__all__ = ["QuotaUse", "Usage", "User", "UsersAPI"]


@dataclass(frozen=True)
class User:
    id: str
    email: str
    name: str
    role: str
    budget: float
    disabled: bool
    created_at: datetime

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> User:
        return cls(
            id=data["id"],
            email=data["email"],
            name=data["name"],
            role=data["role"],
            budget=data["budget"],
            disabled=data["disabled"],
            created_at=datetime.fromisoformat(data["created_at"]),
        )


class UsersAPI:
    """Create, list, re-budget and disable accounts (admin only)."""

    def __init__(self, http: Http) -> None:
        self._http = http

    def create(self, *, email: str, password: str, name: str = "", budget: float) -> User:
        body = {"email": email, "password": password, "name": name, "budget": budget}
        return User.from_json(self._http.post("/users", json=body))

    def list(self) -> list[User]:
        return [User.from_json(u) for u in self._http.get("/users")]

    def set_budget(self, user: str, budget: float) -> User:
        return User.from_json(
            self._http.put(f"/users/{segment(user)}/budget", json={"budget": budget})
        )

    def disable(self, user: str) -> User:
        return User.from_json(self._http.post(f"/users/{segment(user)}/disable"))

    def me(self) -> User:
        return User.from_json(self._http.get("/users/me"))

    def table(self) -> Table:
        rows = [[u.email, u.name, u.role, u.budget, u.disabled, u.id] for u in self.list()]
        return Table(["Email", "Name", "Role", "Budget", "Disabled", "Id"], rows)

    def __repr__(self) -> str:
        return repr(self.table())

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


@dataclass(frozen=True)
class QuotaUse:
    """`used` of the `limit` `things` this node lets one user hold (`quota` names it)."""

    quota: str
    things: str
    used: int
    limit: int

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)


class Usage(Mapping[str, QuotaUse]):
    """What you hold on this node against each of its limits on one user, by limit
    (`usage["max_models"].left`). A request past one is refused with `QuotaExceeded`;
    deleting models, objects or drafts frees room."""

    def __init__(self, uses: list[QuotaUse]) -> None:
        self._uses = {use.quota: use for use in uses}

    @classmethod
    def from_json(cls, data: list[dict[str, Any]]) -> Usage:
        return cls([QuotaUse(d["quota"], d["things"], d["used"], d["limit"]) for d in data])

    def __getitem__(self, quota: str) -> QuotaUse:
        return self._uses[quota]

    def __iter__(self) -> Iterator[str]:
        return iter(self._uses)

    def __len__(self) -> int:
        return len(self._uses)

    def table(self) -> Table:
        rows = [[u.things, u.used, u.limit, u.left, u.quota] for u in self._uses.values()]
        return Table(["Held", "Used", "Limit", "Left", "Limit's name"], rows)

    def __repr__(self) -> str:
        return repr(self.table())

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()
