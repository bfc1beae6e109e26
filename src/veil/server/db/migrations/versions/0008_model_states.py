"""Flow III steps keep their checkpoint and their private objects in the database: one
transaction holds a step's weights, cart and results (no file per step to sync).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_states",
        sa.Column("model_id", sa.String(36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_states_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", "version", name=op.f("pk_model_states")),
    )
    with op.batch_alter_table("private_objects") as batch:
        batch.add_column(sa.Column("data", sa.LargeBinary(), nullable=True))
        batch.alter_column("path", existing_type=sa.String(500), nullable=True)


def downgrade() -> None:
    # Objects and versions kept only in the database cannot go back to files.
    op.execute("DELETE FROM private_objects WHERE path IS NULL")
    with op.batch_alter_table("private_objects") as batch:
        batch.alter_column("path", existing_type=sa.String(500), nullable=False)
        batch.drop_column("data")
    op.drop_table("model_states")
