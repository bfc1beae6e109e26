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

from veil.client._http import Http, segment
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
        spent = [r.spent_after for r in releases]
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

    `cost` is what it added to your epsilon spent, `spent_after` your spent after it.
    `get()` gives the result (weights as `{name: numpy array}`, a step's loss or
    predictions as a float or an array, metrics and statistics as a dict), downloaded
    again when needed, so `client.releases[-1].get()` works from any later login.
    Noised values come with their noise std (`noise()`), and `get(clipped=True)` clips
    them to where the true value lies (a loss to [0, loss_bound], probabilities to
    [0, 1]): post-processing, which costs nothing.
    """

    id: str
    kind: str
    cost: float
    spent_after: float
    created_at: datetime
    model_id: str | None
    object_id: str | None
    mechanism: str = ""
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    result: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    _http: Http | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, http: Http, data: dict[str, Any]) -> Published:
        return cls(
            id=data["id"],
            kind=data["kind"],
            cost=data["cost"],
            spent_after=data["spent_after"],
            created_at=datetime.fromisoformat(data["created_at"]),
            model_id=data["model_id"],
            object_id=data["object_id"],
            mechanism=data["mechanism"],
            params=data["params"],
            result=data.get("result"),
            _http=http,
        )

    def _fetch(self) -> Any:
        if self._http is None:
            raise RuntimeError("This Published handle is not attached to a node session.")
        response = self._http.request("GET", f"/releases/{self.id}/result")
        return response.content if self.kind == "weights" else response.json()

    def _result(self) -> dict[str, Any]:
        return self.result if self.result is not None else self._fetch()

    def get(self, *, clipped: bool = False) -> Any:
        """The released result; with `clipped`, noised values clipped to their range."""
        if self.kind == "weights":
            return safetensors.numpy.load(self._fetch())
        result = self._result()
        if self.kind == "statistics":
            return {k: np.asarray(result[k], dtype=np.float64) for k in ("mean", "std")}
        key = "clipped" if clipped else "value"
        values = {
            name: _value(entry.get(key, entry["value"]), entry["shape"])
            for name, entry in result["values"].items()
        }
        if self.kind == "object":
            (value,) = values.values()
            return value
        return values

    def noise(self) -> dict[str, float]:
        """The standard deviation of the noise on each released value (none for weights,
        which DP-SGD noised while training)."""
        if self.kind == "weights":
            return {}
        return {name: entry["std"] for name, entry in self._result()["values"].items()}

    def __repr__(self) -> str:
        if self.object_id:
            what = f"{self.params.get('object_kind', 'object')} of model {_short(self.model_id)}"
        elif self.model_id:
            what = f"{self.kind} of model {_short(self.model_id)}"
        else:
            what = f"{self.kind} of {self.params.get('asset', '?')}"
        shown = "" if self.result is None else _shown(self.result)
        return (
            f"<Published {what}{shown}; cost epsilon {self.cost:.4g}, "
            f"spent {self.spent_after:.4g}; id={self.id}>"
        )


def _shown(result: dict[str, Any]) -> str:
    """`: loss 0.52 ± 0.05 (clipped 0.52)` for scalars, `± std` only for arrays."""
    parts = []
    for name, entry in result["values"].items():
        if entry["shape"]:
            parts.append(f"{name} {tuple(entry['shape'])} ± {entry['std']:.3g}")
            continue
        text = f"{name} {entry['value']:.4g} ± {entry['std']:.3g}"
        if "clipped" in entry and entry["clipped"] != entry["value"]:
            text += f" (clipped to {entry['clipped']:.4g})"
        parts.append(text)
    return ": " + ", ".join(parts) if parts else ""


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
                r.cost,
                r.spent_after,
                r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                _short(r.model_id),
                _short(r.object_id),
                r.id,
            ]
            for i, r in enumerate(self._items)
        ]
        columns = ["Idx", "Kind", "Cost (epsilon)", "Spent after", "Created", "Model", "Object"]
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
        data = self._http.get(f"/ledger/{segment(user)}/releases")
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
