"""What a data scientist has paid for: `client.privacy_budget`, `client.releases`.

A `Published` handle names a release on the node; `.get()` downloads its result, as
often as wanted, so a result once paid for is never lost with a Python variable:
`client.releases[-1].get()` works from any later login. The admin reads every
user's budget through `client.ledger`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, overload

import numpy as np
import safetensors.numpy

from veil.client._http import Http
from veil.client._table import Table

__all__ = ["Ledger", "LedgerEntry", "PrivacyBudget", "Published", "Releases"]


def _short(value: str | None) -> str:
    return "" if value is None else value[:8]


@dataclass(frozen=True)
class PrivacyBudget:
    """Your epsilon budget on this node, what releases spent of it, and what is left.

    In a notebook it shows as a table; `plot()` draws the spending over time.
    """

    total: float
    spent: float
    remaining: float
    delta: float
    _http: Http | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any], http: Http | None = None) -> PrivacyBudget:
        return cls(
            total=data["total"],
            spent=data["spent"],
            remaining=data["remaining"],
            delta=data["delta"],
            _http=http,
        )

    def table(self) -> Table:
        columns = ["Budget (epsilon)", "Spent", "Remaining", "Delta"]
        return Table(columns, [[self.total, self.spent, self.remaining, f"{self.delta:g}"]])

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def plot(self, ax: Any = None) -> Any:
        """Draw the epsilon spent over time (one step per release) against the budget.

        Needs matplotlib (`pip install matplotlib`); draws on `ax` if given and returns
        the matplotlib Axes.
        """
        if self._http is None:
            raise RuntimeError("This PrivacyBudget is not attached to a node session.")
        plt = _pyplot("PrivacyBudget.plot()")
        releases = [Published.from_json(self._http, r) for r in self._http.get("/releases")]
        if ax is None:
            _, ax = plt.subplots()
        now = _local(datetime.now(UTC))
        times = [_local(r.created_at) for r in releases]
        spent = [r.epsilon_after for r in releases]
        ax.step(
            [times[0] if times else now, *times, now],
            [0.0, *spent, spent[-1] if spent else 0.0],
            where="post",
            label="spent",
        )
        ax.axhline(self.total, linestyle="--", color="grey", label=f"budget {self.total:g}")
        ax.set_xlabel("time")
        ax.set_ylabel(f"epsilon spent (delta={self.delta:g})")
        ax.set_ylim(bottom=0)
        ax.legend()
        return ax

    def __repr__(self) -> str:
        return (
            f"<PrivacyBudget remaining epsilon={self.remaining:.4g} of {self.total:.4g} "
            f"(spent {self.spent:.4g}) at delta={self.delta:g}>"
        )


def _local(moment: datetime) -> datetime:
    """Naive local time for matplotlib; the node's times are UTC (SQLite drops the zone)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone().replace(tzinfo=None)


def _pyplot(what: str) -> Any:
    """matplotlib.pyplot, or an ImportError that says which package to install."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            f"{what} draws with matplotlib, which is not installed: pip install matplotlib"
        ) from None
    return plt


@dataclass(frozen=True)
class Published:
    """A release: a result that left the node through a DP mechanism and was charged.

    `get()` downloads it again each time: weights as `{name: numpy array}`, a private
    object as its noised float or array.
    """

    id: str
    kind: str
    epsilon_added: float
    epsilon_after: float
    created_at: datetime
    model_id: str | None
    object_id: str | None
    mechanism: str = ""
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    _http: Http | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, http: Http, data: dict[str, Any]) -> Published:
        return cls(
            id=data["id"],
            kind=data["kind"],
            epsilon_added=data["epsilon_added"],
            epsilon_after=data["epsilon_after"],
            created_at=datetime.fromisoformat(data["created_at"]),
            model_id=data["model_id"],
            object_id=data["object_id"],
            mechanism=data["mechanism"],
            params=data["params"],
            _http=http,
        )

    def get(self) -> Any:
        """The released result: `{name: np.ndarray}` for weights, a float or an array
        for a private object, `{name: float}` for metrics."""
        if self._http is None:
            raise RuntimeError("This Published handle is not attached to a node session.")
        response = self._http.request("GET", f"/releases/{self.id}/result")
        if self.kind == "weights":
            return safetensors.numpy.load(response.content)
        values = {
            name: _value(entry["value"], entry["shape"])
            for name, entry in response.json()["values"].items()
        }
        if self.kind == "object":
            (value,) = values.values()
            return value
        return values

    def __repr__(self) -> str:
        if self.object_id:
            what = f"object {_short(self.object_id)} (of model {_short(self.model_id)})"
        elif self.model_id:
            what = f"{self.kind} of model {_short(self.model_id)}"
        else:
            what = self.kind
        return (
            f"<Published {what}: epsilon +{self.epsilon_added:.4g} "
            f"(total {self.epsilon_after:.4g}), id={self.id}>"
        )


def _value(value: Any, shape: list[int]) -> float | np.ndarray:
    if not shape:
        return float(value)
    return np.asarray(value, dtype=np.float64).reshape(tuple(shape))


class Releases(Sequence[Published]):
    """Releases, oldest first; indexable (`[-1]` is the newest) and shown as a table."""

    def __init__(self, items: Sequence[Published]) -> None:
        self._items = list(items)

    @overload
    def __getitem__(self, index: int) -> Published: ...
    @overload
    def __getitem__(self, index: slice) -> Releases: ...
    def __getitem__(self, index: int | slice) -> Published | Releases:
        if isinstance(index, slice):
            return Releases(self._items[index])
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Published]:
        return iter(self._items)

    def table(self) -> Table:
        rows = [
            [
                f"[{i}]",
                r.kind,
                r.epsilon_added,
                r.epsilon_after,
                r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                _short(r.model_id),
                _short(r.object_id),
                r.id,
            ]
            for i, r in enumerate(self._items)
        ]
        columns = ["Idx", "Kind", "Epsilon added", "Epsilon after", "Created", "Model", "Object"]
        return Table([*columns, "Id"], rows)

    def __repr__(self) -> str:
        return repr(self.table())

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


@dataclass(frozen=True)
class LedgerEntry:
    """One account in the admin's ledger."""

    user_id: str
    email: str
    name: str
    role: str
    budget: float
    spent: float
    remaining: float
    releases: int
    delta: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LedgerEntry:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


class Ledger(Sequence[LedgerEntry]):
    """Every account's budget, epsilon spent and release count (admin only)."""

    def __init__(self, http: Http, entries: Sequence[LedgerEntry]) -> None:
        self._http = http
        self._entries = list(entries)

    @overload
    def __getitem__(self, index: int) -> LedgerEntry: ...
    @overload
    def __getitem__(self, index: slice) -> list[LedgerEntry]: ...
    def __getitem__(self, index: int | slice) -> LedgerEntry | list[LedgerEntry]:
        return self._entries[index]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(self._entries)

    def entry(self, user: str) -> LedgerEntry:
        """The line of one account, by e-mail or id."""
        for entry in self._entries:
            if user.strip().lower() in (entry.email, entry.user_id):
                return entry
        raise KeyError(user)

    def releases(self, user: str) -> Releases:
        """Every release of one account, by e-mail or id."""
        data = self._http.get(f"/ledger/{user}/releases")
        return Releases([Published.from_json(self._http, r) for r in data])

    def table(self) -> Table:
        rows = [
            [e.email, e.role, e.budget, e.spent, e.remaining, e.releases, e.user_id]
            for e in self._entries
        ]
        columns = ["Email", "Role", "Budget", "Spent", "Remaining", "Releases", "Id"]
        return Table(columns, rows)

    def __repr__(self) -> str:
        delta = f" (epsilon at delta={self._entries[0].delta:g})" if self._entries else ""
        return f"Privacy ledger{delta}\n{self.table()!r}"

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()
