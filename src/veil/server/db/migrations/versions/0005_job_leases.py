"""Jobs that cannot be lost, and bounded work: a lease and a resume point on each job,
the node's limits on one fit's steps and on one user's running jobs.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("worker", sa.String(200), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("checkpoint_step", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    with op.batch_alter_table("node") as batch:
        batch.add_column(
            sa.Column("max_fit_steps", sa.Integer(), nullable=False, server_default="100000")
        )
        batch.add_column(
            sa.Column("max_running_jobs", sa.Integer(), nullable=False, server_default="1")
        )


def downgrade() -> None:
    with op.batch_alter_table("node") as batch:
        batch.drop_column("max_running_jobs")
        batch.drop_column("max_fit_steps")
    op.drop_index("ix_jobs_status", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("checkpoint_step")
        batch.drop_column("lease_expires_at")
        batch.drop_column("worker")
        batch.drop_column("attempt")
