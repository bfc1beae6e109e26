"""The one release path: private objects keep per-row values with their source and
bound; progress keeps the expected sample count, never the exact Poisson one.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Objects made before this revision hold a released-ready aggregate without the rows
    # it came from; the new path cannot price them per row, so they are dropped.
    op.execute("DELETE FROM private_objects")
    with op.batch_alter_table("private_objects") as batch:
        batch.drop_column("sensitivity")
        batch.add_column(sa.Column("source", sa.String(36), nullable=False, server_default=""))
        batch.add_column(sa.Column("bound", sa.JSON(), nullable=True))
    for table in ("jobs", "job_epochs"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("samples_seen", new_column_name="expected_samples")


def downgrade() -> None:
    for table in ("jobs", "job_epochs"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("expected_samples", new_column_name="samples_seen")
    with op.batch_alter_table("private_objects") as batch:
        batch.drop_column("bound")
        batch.drop_column("source")
        batch.add_column(sa.Column("sensitivity", sa.Float(), nullable=True))
