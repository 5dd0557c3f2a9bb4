"""merged-model exports: one per fine-tuned model or checkpoint, made by a worker and stored as a tar

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_exports",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=512), nullable=False),
        sa.Column("base_model", sa.String(length=256), nullable=False),
        sa.Column("adapter_prefix", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("organization_id", "model"),
    )
    op.create_index(op.f("ix_model_exports_organization_id"), "model_exports", ["organization_id"], unique=False)
    op.create_index(op.f("ix_model_exports_adapter_prefix"), "model_exports", ["adapter_prefix"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_model_exports_adapter_prefix"), table_name="model_exports")
    op.drop_index(op.f("ix_model_exports_organization_id"), table_name="model_exports")
    op.drop_table("model_exports")
