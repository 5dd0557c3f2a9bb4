"""job training options and results

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing jobs get empty values; new rows are always written with both set.
    op.add_column(
        "fine_tuning_jobs", sa.Column("training_options", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
    )
    op.add_column(
        "fine_tuning_jobs", sa.Column("result_files", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
    )
    op.add_column("fine_tuning_jobs", sa.Column("estimated_finish", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("fine_tuning_jobs", "estimated_finish")
    op.drop_column("fine_tuning_jobs", "result_files")
    op.drop_column("fine_tuning_jobs", "training_options")
