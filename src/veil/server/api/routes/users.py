"""Accounts: the admin manages data scientists; everyone can read itself."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from pydantic import BaseModel, Field

from veil.server.api.deps import AdminUser, CurrentUser, SessionDep
from veil.server.api.errors import responses
from veil.server.api.schemas import Strict, UserOut
from veil.server.services import quotas, users
from veil.server.services.passwords import MIN_PASSWORD_LENGTH
from veil.server.services.users import EMAIL_PATTERN

router = APIRouter(prefix="/users", tags=["users"])


class UserIn(Strict):
    email: str = Field(max_length=320, pattern=EMAIL_PATTERN)
    password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)
    name: str = Field(default="", max_length=200)
    budget: float = Field(ge=0, description="epsilon")


class BudgetIn(Strict):
    budget: float = Field(ge=0, description="epsilon")


@router.post("", status_code=201, responses=responses(403, 409))
def create_user(body: UserIn, session: SessionDep, _: AdminUser) -> UserOut:
    user = users.create_user(
        session, email=body.email, password=body.password, name=body.name, budget=body.budget
    )
    return UserOut.model_validate(user)


@router.get("", responses=responses(403))
def list_users(session: SessionDep, _: AdminUser) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in users.list_users(session)]


class QuotaUseOut(BaseModel):
    quota: str = Field(description="the node's limit on one user, e.g. max_models")
    things: str
    used: int = Field(description="what the caller holds now")
    limit: int


@router.get("/me")
def me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user)


@router.get("/me/usage")
def my_usage(user: CurrentUser, session: SessionDep) -> list[QuotaUseOut]:
    """What the caller holds against each of the node's per-user limits."""
    return [QuotaUseOut(**asdict(q)) for q in quotas.usage(session, user.id)]


@router.put("/{user}/budget", responses=responses(403, 404))
def set_budget(user: str, body: BudgetIn, session: SessionDep, _: AdminUser) -> UserOut:
    return UserOut.model_validate(
        users.set_budget(session, user_id_or_email=user, budget=body.budget)
    )


@router.post("/{user}/disable", responses=responses(403, 404))
def disable(user: str, session: SessionDep, _: AdminUser) -> UserOut:
    return UserOut.model_validate(users.disable_user(session, user_id_or_email=user))
