"""dataset reports and formats

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "file_token_stats",
        sa.Column("file_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["file_id"], ["files.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("file_id", "model"),
    )
    op.add_column("files", sa.Column("report", sa.JSON(), nullable=True))
    op.add_column("files", sa.Column("format", sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column("files", "format")
    op.drop_column("files", "report")
    op.drop_table("file_token_stats")
