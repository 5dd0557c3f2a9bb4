"""base models added while the service runs (`loraport base-models add`)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "base_models",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("revision", sa.String(32), nullable=False),
        sa.Column("weights_prefix", sa.String(512), nullable=False),
        sa.Column("architecture", sa.String(128), nullable=False),
        sa.Column("parameters", sa.BigInteger(), nullable=False),
        sa.Column("context_length", sa.Integer(), nullable=False),
        sa.Column("chat_template", sa.Text(), nullable=True),
        sa.Column("chat_template_source", sa.String(16), nullable=False),
        sa.Column("lora_target_modules", sa.JSON(), nullable=False),
        sa.Column("lora_rank", sa.Integer(), nullable=False),
        sa.Column("learning_rate", sa.Float(), nullable=False),
        sa.Column("max_seq_length", sa.Integer(), nullable=False),
        sa.Column("quantization", sa.String(16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("base_models")
