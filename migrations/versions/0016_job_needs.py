"""what a job needs of the worker that runs it: CUDA (QLoRA) and its GPU memory estimate

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "fine_tuning_jobs", sa.Column("needs_cuda", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.add_column("fine_tuning_jobs", sa.Column("gpu_memory_bytes", sa.BigInteger(), nullable=True))
    # Jobs queued before: QLoRA ones need CUDA, as they always did.
    op.execute("UPDATE fine_tuning_jobs SET needs_cuda = true WHERE training_options::jsonb->>'quantization' = '4bit'")


def downgrade() -> None:
    op.drop_column("fine_tuning_jobs", "gpu_memory_bytes")
    op.drop_column("fine_tuning_jobs", "needs_cuda")
