"""Models, drafts, jobs, progress, private objects; the ledger and releases.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _id() -> sa.Column:
    return sa.Column("id", sa.String(36), primary_key=True)


def _fk(column: str, target: str, *, nullable: bool = False, cascade: bool = False) -> sa.Column:
    return sa.Column(
        column,
        sa.String(36),
        sa.ForeignKey(f"{target}.id", ondelete="CASCADE" if cascade else None),
        nullable=nullable,
    )


def _created() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "model_drafts",
        _id(),
        _fk("owner_id", "users"),
        sa.Column("layers", sa.JSON(), nullable=False),
        sa.Column("compiled_model_id", sa.String(36), nullable=True),
        _created(),
    )
    op.create_index("ix_model_drafts_owner_id", "model_drafts", ["owner_id"])
    op.create_table(
        "models",
        _id(),
        _fk("owner_id", "users"),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("cart_state", sa.JSON(), nullable=False),
        sa.Column("cart_curve", sa.JSON(), nullable=False),
        sa.Column("charged_curve", sa.JSON(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("busy_job_id", sa.String(36), nullable=True),
        _created(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_models_owner_id", "models", ["owner_id"])
    op.create_table(
        "jobs",
        _id(),
        _fk("model_id", "models", cascade=True),
        _fk("owner_id", "users"),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("max_iter", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("samples_seen", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _created(),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_jobs_model_id", "jobs", ["model_id"])
    op.create_index("ix_jobs_owner_id", "jobs", ["owner_id"])
    op.create_table(
        "job_epochs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _fk("job_id", "jobs", cascade=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("samples_seen", sa.Integer(), nullable=False),
        sa.Column("elapsed", sa.Float(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        _created(),
    )
    op.create_index("ix_job_epochs_job_id", "job_epochs", ["job_id"])
    op.create_table(
        "private_objects",
        _id(),
        _fk("owner_id", "users"),
        _fk("model_id", "models", cascade=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("sensitivity", sa.Float(), nullable=True),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        _created(),
    )
    op.create_index("ix_private_objects_owner_id", "private_objects", ["owner_id"])
    op.create_index("ix_private_objects_model_id", "private_objects", ["model_id"])
    op.create_table(
        "ledgers",
        sa.Column(
            "user_id",
            sa.String(36),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("curve", sa.JSON(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "releases",
        _id(),
        _fk("user_id", "users"),
        sa.Column("model_id", sa.String(36), nullable=True),
        sa.Column("object_id", sa.String(36), nullable=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("mechanism", sa.String(40), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("curve_added", sa.JSON(), nullable=False),
        sa.Column("epsilon_added", sa.Float(), nullable=False),
        sa.Column("epsilon_after", sa.Float(), nullable=False),
        sa.Column("result_path", sa.String(500), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        _created(),
    )
    op.create_index("ix_releases_user_id", "releases", ["user_id"])
    op.create_index("ix_releases_model_id", "releases", ["model_id"])


def downgrade() -> None:
    for table in ("releases", "ledgers", "private_objects", "job_epochs", "jobs", "models"):
        op.drop_table(table)
    op.drop_table("model_drafts")
