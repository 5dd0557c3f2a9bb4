"""jobs held back after an outage until `retry_at`; admin API keys

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fine_tuning_jobs", sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_keys", sa.Column("is_admin", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    # The first key, which `loraport up` made and named, becomes the admin key it was named as; the others stay
    # plain keys (there was no key management to be allowed before).
    op.execute("UPDATE api_keys SET is_admin = true WHERE name IN ('admin', 'bootstrap')")


def downgrade() -> None:
    op.drop_column("api_keys", "is_admin")
    op.drop_column("fine_tuning_jobs", "retry_at")
