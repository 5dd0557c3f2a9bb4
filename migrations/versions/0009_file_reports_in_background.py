"""data reports computed once, in the background: a claimed status on files and on token counts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("files", sa.Column("report_status", sa.String(16), nullable=True))
    op.add_column("files", sa.Column("report_claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE files SET report_status = 'ready' WHERE report IS NOT NULL")
    op.add_column(
        "file_token_stats", sa.Column("status", sa.String(16), server_default=sa.text("'ready'"), nullable=False)
    )
    op.add_column("file_token_stats", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.alter_column("file_token_stats", "stats", existing_type=sa.JSON(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM file_token_stats WHERE stats IS NULL")
    op.alter_column("file_token_stats", "stats", existing_type=sa.JSON(), nullable=False)
    op.drop_column("file_token_stats", "claimed_at")
    op.drop_column("file_token_stats", "status")
    op.drop_column("files", "report_claimed_at")
    op.drop_column("files", "report_status")
