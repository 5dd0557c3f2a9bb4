"""evaluation options and report of fine-tuning jobs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Jobs created before have no options: they are evaluated with the defaults.
    op.add_column('fine_tuning_jobs', sa.Column('evaluation_options', sa.JSON(), nullable=True))
    op.add_column('fine_tuning_jobs', sa.Column('evaluation', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('fine_tuning_jobs', 'evaluation')
    op.drop_column('fine_tuning_jobs', 'evaluation_options')
