"""Datasets, assets and asset views.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "owner_id",
            sa.String(36),
            sa.ForeignKey("users.id", ondelete="SET NULL", name="fk_datasets_owner_id_users"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name", name="uq_datasets_name"),
    )
    op.create_table(
        "assets",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "dataset_id",
            sa.String(36),
            sa.ForeignKey("datasets.id", ondelete="CASCADE", name="fk_assets_dataset_id_datasets"),
            nullable=False,
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("n_rows", sa.BigInteger(), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bounds_low", sa.Float(), nullable=True),
        sa.Column("bounds_high", sa.Float(), nullable=True),
        sa.Column("mock_source", sa.String(16), nullable=False),
        sa.Column("mock_rows", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("dataset_id", "name", name="uq_assets_dataset_id"),
    )
    op.create_index("ix_assets_dataset_id", "assets", ["dataset_id"])
    op.create_table(
        "asset_views",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "asset_id",
            sa.String(36),
            sa.ForeignKey("assets.id", ondelete="CASCADE", name="fk_asset_views_asset_id_assets"),
            nullable=False,
        ),
        sa.Column(
            "owner_id",
            sa.String(36),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_asset_views_owner_id_users"),
            nullable=False,
        ),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("stop", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_asset_views_asset_id", "asset_views", ["asset_id"])
    op.create_index("ix_asset_views_owner_id", "asset_views", ["owner_id"])


def downgrade() -> None:
    op.drop_index("ix_asset_views_owner_id", "asset_views")
    op.drop_index("ix_asset_views_asset_id", "asset_views")
    op.drop_table("asset_views")
    op.drop_index("ix_assets_dataset_id", "assets")
    op.drop_table("assets")
    op.drop_table("datasets")
