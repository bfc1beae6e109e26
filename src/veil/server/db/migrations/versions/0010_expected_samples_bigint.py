"""A fit's expected samples (step x batch size) pass 2^31 in long fits of large batches:
PostgreSQL's INTEGER refused them and the job failed. They are BIGINT now.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TABLES = ("jobs", "job_epochs")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "expected_samples", existing_type=sa.Integer(), type_=sa.BigInteger()
            )


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "expected_samples", existing_type=sa.BigInteger(), type_=sa.Integer()
            )
