"""Request and response bodies shared by several routes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

__all__ = ["Strict", "UserOut"]


class Strict(BaseModel):
    """Request bodies refuse unknown fields, so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


class UserOut(BaseModel):
    id: str
    email: str
    name: str
    role: str
    budget: float
    disabled: bool
    created_at: datetime

    model_config = ConfigDict(from_attributes=True)
