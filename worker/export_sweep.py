"""Merged-model exports that storage keeps and no row will name, cleared by the maintenance worker's storage sweep:
the folders of exports deleted with their model while object storage was down, and the tars of attempts that were
superseded (a worker lost after its upload, its export asked for again and made by a later attempt)."""

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.storage import ObjectStore, export_key, export_prefix
from app.core.tables import ModelExport, Organization

log = structlog.get_logger()


def leftovers_of_exports(session: Session, store: ObjectStore) -> list[str]:
    """Deletes them; returns their keys. Only folders that exist are looked at: a listing per organisation.

    A tar of the row's current attempt is never touched, whatever the status: that attempt may be uploading it, and
    only it can become the export (its finish is fenced on the attempt).
    """
    deleted = []
    for organization_id in list(session.scalars(select(Organization.id))):
        export_ids = list(store.subfolders(export_prefix(organization_id, "")))
        if not export_ids:
            continue
        rows = session.execute(select(ModelExport.id, ModelExport.attempt).where(ModelExport.id.in_(export_ids)))
        attempts = {export_id: attempt for export_id, attempt in rows}
        for export_id in export_ids:
            superseded = {export_key(organization_id, export_id, n) for n in range(1, attempts.get(export_id, 0))}
            for key in list(store.list_keys(export_prefix(organization_id, export_id) + "/")):
                if export_id not in attempts or key in superseded:
                    store.delete(key)
                    deleted.append(key)
    if deleted:
        log.info("storage.export_leftovers.deleted", count=len(deleted))
    return deleted
