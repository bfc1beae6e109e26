"""The node's identity and first-start bootstrap (name, default admin, delta)."""

from __future__ import annotations

import logging
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from veil.server.db.tables.accounts import ROLE_ADMIN, NodeRow, UserRow
from veil.server.services.passwords import hash_password
from veil.server.settings import Settings

__all__ = [
    "DEFAULT_PASSWORD_WARNING",
    "bootstrap",
    "default_password_in_use",
    "get_node",
    "login_warnings",
    "node_delta",
    "random_node_name",
]

log = logging.getLogger("veil.node")

DEFAULT_PASSWORD_WARNING = (
    "Anyone can login as an admin to your node right now because your password is still "
    "the default! Change it with `veil admin passwd`."
)

_ADJECTIVES = [
    "mystifying",
    "amazing",
    "brave",
    "calm",
    "clever",
    "dazzling",
    "eager",
    "fancy",
    "gentle",
    "happy",
    "jolly",
    "kind",
    "lively",
    "merry",
    "nimble",
    "proud",
    "quirky",
    "silly",
    "sleepy",
    "snappy",
    "stoic",
    "sunny",
    "tender",
    "vibrant",
    "witty",
    "zealous",
    "bold",
    "curious",
    "dreamy",
    "elegant",
    "fearless",
    "gallant",
    "honest",
    "inspiring",
    "jovial",
    "keen",
    "loving",
    "modest",
    "noble",
    "optimistic",
    "patient",
    "quiet",
    "radiant",
    "serene",
    "trusting",
    "upbeat",
]
_NAMES = [
    "sophia",
    "ada",
    "alan",
    "grace",
    "katherine",
    "barbara",
    "edsger",
    "donald",
    "margaret",
    "claude",
    "john",
    "emmy",
    "marie",
    "hedy",
    "tim",
    "linus",
    "guido",
    "leslie",
    "frances",
    "radia",
    "shafi",
    "cynthia",
    "dorothy",
    "annie",
    "mary",
    "joan",
    "lovelace",
    "turing",
    "hopper",
    "knuth",
    "dijkstra",
    "liskov",
    "noether",
    "curie",
    "lamport",
    "allen",
    "hamilton",
    "johnson",
    "goldwasser",
    "dwork",
    "perlman",
]


def random_node_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NAMES)}"


def get_node(session: Session) -> NodeRow:
    node = session.get(NodeRow, 1)
    if node is None:  # bootstrap() runs before the API serves; this is a broken database
        raise RuntimeError("node row missing: the database was not bootstrapped")
    return node


def node_delta(session: Session) -> float:
    """The delta every epsilon on this node is quoted at."""
    return get_node(session).delta


def bootstrap(session: Session, settings: Settings) -> NodeRow:
    """On first start: name the node and create the admin. Later starts keep both."""
    node = session.get(NodeRow, 1)
    if node is None:
        node = NodeRow(
            id=1,
            name=random_node_name(),
            delta=settings.default_delta,
            max_params=settings.max_params,
            max_flops=settings.max_flops,
            max_fit_steps=settings.max_fit_steps,
            max_running_jobs=settings.max_running_jobs,
            max_active_jobs=settings.max_active_jobs,
            max_models=settings.max_models,
            max_drafts=settings.max_drafts,
            max_objects=settings.max_objects,
            max_object_bytes=settings.max_object_bytes,
        )
        session.add(node)
    admin = session.scalars(select(UserRow).where(UserRow.role == ROLE_ADMIN).limit(1)).first()
    if admin is None:
        session.add(
            UserRow(
                email=settings.admin_email,
                name="Administrator",
                role=ROLE_ADMIN,
                password_hash=hash_password(settings.admin_password.get_secret_value()),
                budget=0.0,
                default_password=settings.uses_default_password,
            )
        )
    session.commit()
    if default_password_in_use(session):
        log.warning(DEFAULT_PASSWORD_WARNING)
    return node


def default_password_in_use(session: Session) -> bool:
    query = select(UserRow.id).where(UserRow.role == ROLE_ADMIN, UserRow.default_password)
    return session.scalars(query.limit(1)).first() is not None


def login_warnings(session: Session, *, user: UserRow) -> list[str]:
    """What a login should tell `user`: the default password concerns the admin only."""
    if user.role == ROLE_ADMIN and default_password_in_use(session):
        return [DEFAULT_PASSWORD_WARNING]
    return []
