"""evaluation options and report of fine-tuning jobs; evaluations asked for on their own

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Jobs created before have no options: they are evaluated with the defaults.
    op.add_column("fine_tuning_jobs", sa.Column("evaluation_options", sa.JSON(), nullable=True))
    op.add_column("fine_tuning_jobs", sa.Column("evaluation", sa.JSON(), nullable=True))
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=512), nullable=False),
        sa.Column("baseline", sa.String(length=512), nullable=False),
        sa.Column("base_model", sa.String(length=256), nullable=False),
        sa.Column("file_id", sa.String(length=64), nullable=False),
        sa.Column("max_examples", sa.Integer(), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("seq"),
    )
    op.create_index(op.f("ix_evaluations_organization_id"), "evaluations", ["organization_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_evaluations_organization_id"), table_name="evaluations")
    op.drop_table("evaluations")
    op.drop_column("fine_tuning_jobs", "evaluation")
    op.drop_column("fine_tuning_jobs", "evaluation_options")
