"""evaluations claimed, leased and retried as jobs are: attempt, lease, retry time

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("evaluations", sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.add_column("evaluations", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("evaluations", sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(op.f("ix_evaluations_status"), "evaluations", ["status"], unique=False)  # the reaper's queries
    # An evaluation that was running before leases existed gets its first attempt and a lease that has run out:
    # the reaper re-queues it, as it would one whose worker died.
    op.execute("UPDATE evaluations SET attempt = 1, lease_expires_at = now() WHERE status = 'running'")


def downgrade() -> None:
    op.drop_index(op.f("ix_evaluations_status"), table_name="evaluations")
    op.drop_column("evaluations", "retry_at")
    op.drop_column("evaluations", "lease_expires_at")
    op.drop_column("evaluations", "attempt")
