"""Load the demo datasets (`veil.demo`) onto a node, through the same checks as an upload."""

from __future__ import annotations

import logging

from sqlalchemy import select

from veil._exceptions import Conflict
from veil.demo import DEMO_DATASETS, private_train_split
from veil.server.context import NodeContext
from veil.server.db.tables.accounts import ROLE_ADMIN, UserRow
from veil.server.db.tables.datasets import DatasetRow
from veil.server.services.uploads import ingest_arrays

__all__ = ["ensure_demo_datasets"]

log = logging.getLogger("veil.node")


def ensure_demo_datasets(ctx: NodeContext) -> list[str]:
    """Create the demo datasets the node lacks; returns the names it created."""
    created: list[str] = []
    with ctx.db.session() as session:
        admin = session.scalars(
            select(UserRow).where(UserRow.role == ROLE_ADMIN).order_by(UserRow.created_at)
        ).first()
        if admin is None:  # create_app bootstraps the admin before anyone can call this
            raise RuntimeError("the node has no admin: start it with create_app first")
        existing = set(session.scalars(select(DatasetRow.name)))
        for name, spec in DEMO_DATASETS.items():
            if name in existing:
                continue
            try:
                ingest_arrays(
                    session,
                    ctx.arrays,
                    user=admin,
                    name=name,
                    description=spec.description,
                    assets=private_train_split(name),
                    bounds=spec.bounds,
                    max_bytes=ctx.settings.max_upload_bytes,
                    subject=spec.subject,
                )
            except Conflict:  # another process loaded it meanwhile: fine, it is there
                continue
            log.info("demo dataset %s loaded", name)
            created.append(name)
    return created
