"""Request and response bodies shared by several routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, model_validator

from veil.server.db.base import as_utc

__all__ = ["MIN_POSITIVE", "Integral", "JsonInt", "Strict", "UserOut", "UtcDatetime"]

# The least positive number a request may carry where zero is not allowed: the node
# flushes subnormal floats to zero (so that no value makes a step slower), and would
# read 5e-324 as 0.
MIN_POSITIVE = 1e-300


def _utc(value: Any) -> Any:
    return as_utc(value) if isinstance(value, datetime) else value


# Every moment on the wire carries its offset (UTC), as `format: date-time` requires:
# SQLite hands back naive datetimes, which are UTC on this node.
UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_utc)]


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer as JSON Schema has it: 3 or 3.0 (a number without a fraction), never true,
# "3" or 3.5. Request bodies are strict, so a plain `int` would refuse 3.0. Constraints
# go before `Integral` (`Annotated[int, Field(gt=0), Integral]`), or the schema would
# not carry them as JSON Schema keywords.
Integral = BeforeValidator(_integral)
JsonInt = Annotated[int, Integral]


class Strict(BaseModel):
    """Request bodies refuse unknown fields, so a typo is an error, not a silent default;
    NaN and infinities, which no count, bound or epsilon can be; and values of another
    type (`false` for a budget, `"3"` or `2.0` for a count)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @model_validator(mode="after")
    def _no_nul(self) -> Strict:
        """Nor text with a NUL character, which no name, id or address holds (and which
        PostgreSQL cannot store)."""
        for name, value in self:
            if _holds_nul(value):
                raise ValueError(f"{name} may not hold a NUL character (\\u0000)")
        return self


def _holds_nul(value: object) -> bool:
    """Whether any text in `value` holds a NUL; a loop, not recursion: JSON may nest
    deeper than Python's stack."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, BaseModel):
            pending.extend(v for _, v in item)
    return False


class UserOut(BaseModel):
    id: str
    email: str
    name: str
    role: str
    budget: float
    disabled: bool
    created_at: UtcDatetime

    model_config = ConfigDict(from_attributes=True)
