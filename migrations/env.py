"""Alembic environment: the URL comes from the caller's config (see app.core.bootstrap.alembic_config)."""

from alembic import context
from sqlalchemy import create_engine

from app.core import tables  # noqa: F401  (registers every table on Base.metadata)
from app.core.db import Base

config = context.config


def run_migrations_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
