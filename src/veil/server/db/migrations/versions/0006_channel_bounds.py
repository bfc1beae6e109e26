"""Declared bounds per channel: one JSON `bounds` column, [low, high], each a number or
a list of one per channel, instead of two floats.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_assets = sa.table(
    "assets",
    sa.column("id", sa.String),
    sa.column("bounds_low", sa.Float),
    sa.column("bounds_high", sa.Float),
    sa.column("bounds", sa.JSON),
)


def upgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("bounds", sa.JSON(), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_assets.c.id, _assets.c.bounds_low, _assets.c.bounds_high).where(
            _assets.c.bounds_low.is_not(None)
        )
    ).all()
    for asset_id, low, high in rows:
        connection.execute(
            _assets.update().where(_assets.c.id == asset_id).values(bounds=[low, high])
        )
    with op.batch_alter_table("assets") as batch:
        batch.drop_column("bounds_low")
        batch.drop_column("bounds_high")


def downgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("bounds_low", sa.Float(), nullable=True))
        batch.add_column(sa.Column("bounds_high", sa.Float(), nullable=True))
        batch.drop_column("bounds")
