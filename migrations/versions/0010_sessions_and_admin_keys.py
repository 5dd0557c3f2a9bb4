"""dashboard sessions (opaque login tokens); admin keys and stored key prefixes corrected

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

0007 made every key *named* `admin` or `bootstrap`, in any organisation, an admin key. The keys it meant are the
ones `app.core.bootstrap.prepare` makes: `admin` (a first key it generates) or `bootstrap` (LORAPORT_BOOTSTRAP_KEY),
both in the bootstrap organisation, which `prepare` creates before any other on the first start. So the rule here:
a key so named keeps `is_admin` only in the installation's first organisation (the oldest); elsewhere it loses it.
An operator who deliberately made such a key admin in another organisation makes it again with
`loraport keys create --admin` (the demoted keys are logged).

Key prefixes were the first 12 characters: a key of 12 or fewer (a short LORAPORT_BOOTSTRAP_KEY) was stored whole,
in clear. Such keys, found as those whose digest is their prefix's, are revoked (their value is in the database,
and start now refuses short bootstrap keys), and every prefix is cut to the 8 characters shown from now on.
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    op.create_table(
        "dashboard_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(op.f("ix_dashboard_sessions_api_key_id"), "dashboard_sessions", ["api_key_id"], unique=False)
    op.create_index(
        op.f("ix_dashboard_sessions_organization_id"), "dashboard_sessions", ["organization_id"], unique=False
    )
    demoted = op.get_bind().execute(
        sa.text(
            "UPDATE api_keys SET is_admin = false WHERE is_admin AND name IN ('admin', 'bootstrap') "
            "AND organization_id <> (SELECT id FROM organizations ORDER BY created_at, id LIMIT 1) RETURNING id"
        )
    )
    for (key_id,) in demoted:
        log.warning("API key %s, named admin/bootstrap outside the first organisation, is no longer admin", key_id)
    stored_whole = "key_hash = encode(sha256(convert_to(prefix, 'UTF8')), 'hex')"
    op.execute(f"UPDATE api_keys SET revoked_at = now() WHERE {stored_whole} AND revoked_at IS NULL")
    op.execute(f"UPDATE api_keys SET prefix = CASE WHEN {stored_whole} THEN '' ELSE left(prefix, 8) END")


def downgrade() -> None:
    op.drop_index(op.f("ix_dashboard_sessions_organization_id"), table_name="dashboard_sessions")
    op.drop_index(op.f("ix_dashboard_sessions_api_key_id"), table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
