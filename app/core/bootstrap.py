"""Everything a fresh deployment needs before it serves: schema, bucket, first organisation and key."""

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import select

from app.core.db import transaction
from app.core.keys import find_key, get_or_create_org, issue_key
from app.core.settings import Settings
from app.core.storage import store_for
from app.core.tables import ApiKey

# The `migrations` package of this distribution (the repository's migrations/ in an editable install).
MIGRATIONS_DIR = Path(str(files("migrations")))


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


def prepare(settings: Settings) -> str | None:
    """Applies migrations, creates the bucket and the first admin key; returns a key created just now."""
    url = settings.require("database_url")
    migrate(url)
    store_for(settings).ensure_bucket()
    with transaction(url) as session:
        org = get_or_create_org(session, settings.bootstrap_org)
        if settings.bootstrap_key:
            if find_key(session, settings.bootstrap_key) is None:
                issue_key(session, org, name="bootstrap", plaintext=settings.bootstrap_key, admin=True)
            return None
        if session.scalar(select(ApiKey.id).where(ApiKey.organization_id == org.id).limit(1)) is None:
            return issue_key(session, org, name="admin", admin=True).plaintext
    return None
