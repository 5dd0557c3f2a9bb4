"""jobs that start from a fine-tuned model

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every existing job was created from a base model, so its base model is its model.
    op.add_column("fine_tuning_jobs", sa.Column("base_model", sa.String(length=256), nullable=True))
    op.execute("UPDATE fine_tuning_jobs SET base_model = model")
    op.alter_column("fine_tuning_jobs", "base_model", nullable=False)
    op.add_column("fine_tuning_jobs", sa.Column("start_adapter_prefix", sa.String(length=512), nullable=True))


def downgrade() -> None:
    op.drop_column("fine_tuning_jobs", "start_adapter_prefix")
    op.drop_column("fine_tuning_jobs", "base_model")
