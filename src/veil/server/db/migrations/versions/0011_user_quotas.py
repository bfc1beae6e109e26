"""Per-user quotas: the node's limits on what one user may hold (active jobs, models,
open drafts, private objects and their bytes), and each user's running object totals,
counted from the objects already stored.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# The Settings defaults, for nodes that exist already (`veil.server.settings`).
_LIMITS = {
    "max_active_jobs": (sa.Integer(), "20"),
    "max_models": (sa.Integer(), "100"),
    "max_drafts": (sa.Integer(), "100"),
    "max_objects": (sa.Integer(), "100000"),
    "max_object_bytes": (sa.BigInteger(), str(4 * 1024**3)),
}


def upgrade() -> None:
    with op.batch_alter_table("node") as batch:
        for name, (type_, default) in _LIMITS.items():
            batch.add_column(sa.Column(name, type_, nullable=False, server_default=default))
    op.create_table(
        "user_usage",
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("objects", sa.Integer(), nullable=False),
        sa.Column("object_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_user_usage_user_id_users",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name="pk_user_usage"),
    )
    # Objects stored before 0008 live in files: counted, with no bytes (0008 kept few).
    op.execute(
        "INSERT INTO user_usage (user_id, objects, object_bytes) "
        "SELECT owner_id, COUNT(*), COALESCE(SUM(LENGTH(data)), 0) "
        "FROM private_objects GROUP BY owner_id"
    )


def downgrade() -> None:
    op.drop_table("user_usage")
    with op.batch_alter_table("node") as batch:
        for name in reversed(_LIMITS):
            batch.drop_column(name)
