"""What the tests read back from PostgreSQL and the object store to check that nothing was left half-written."""

from sqlalchemy import func, select

from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import store_for
from app.core.tables import StoredFile


def stored_state(settings: Settings) -> tuple[int, int]:
    """(file rows, objects in the bucket) across all organisations."""
    with transaction(settings.require("database_url")) as session:
        rows = session.scalar(select(func.count()).select_from(StoredFile))
    return rows or 0, len(list(store_for(settings).list_keys("orgs/")))
