"""Data subjects: a dataset may name the asset holding each row's subject; it counts its
subjects (one per row without one).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("subject_asset", sa.String(64), nullable=True))
        batch.add_column(sa.Column("n_subjects", sa.BigInteger(), nullable=True))
    # Until now every dataset's unit was the row: as many subjects as rows.
    op.execute(
        "UPDATE datasets SET n_subjects = "
        "(SELECT MAX(assets.n_rows) FROM assets WHERE assets.dataset_id = datasets.id)"
    )
    op.execute("UPDATE datasets SET n_subjects = 0 WHERE n_subjects IS NULL")
    with op.batch_alter_table("datasets") as batch:
        batch.alter_column("n_subjects", existing_type=sa.BigInteger(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("n_subjects")
        batch.drop_column("subject_asset")
