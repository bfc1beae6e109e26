"""A flow III step stores its cart as the rows it changed (`cart_changes`), not whole:
a step's write no longer grows with the dataset's size.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cart_changes",
        sa.Column("model_id", sa.String(36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("full", sa.Boolean(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_cart_changes_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", "version", name=op.f("pk_cart_changes")),
    )


def downgrade() -> None:
    # A model whose current version a step made keeps its cart only here: dropping the
    # table would lose what its rows were charged. Refuse rather than forget a charge.
    stepped = op.get_bind().execute(
        sa.text(
            "SELECT COUNT(*) FROM cart_changes c JOIN models m "
            "ON m.id = c.model_id AND m.version = c.version"
        )
    )
    if stepped.scalar_one():
        raise RuntimeError(
            "Cannot downgrade below 0009: models stepped since hold their carts in "
            "cart_changes. Fit or evaluate them first (either stores the cart whole)."
        )
    op.drop_table("cart_changes")
