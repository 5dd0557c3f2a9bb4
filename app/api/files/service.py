"""Recording, reading and deleting files; the bytes themselves arrive through `app.api.files.upload`."""

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.api.files.ingest import Ingested
from app.api.files.names import safe_filename
from app.api.files.report import PENDING, new_claim
from app.api.pagination import paginate
from app.core.errors import InvalidRequest
from app.core.scoped import get_owned
from app.core.tables import Organization, StoredFile

PURPOSES = ("fine-tune",)


@dataclass(frozen=True)
class ReceivedFile:
    """A valid dataset now stored under `storage_key`, not yet recorded in the database."""

    file_id: str
    storage_key: str
    filename: str
    purpose: str
    ingested: Ingested


def check_purpose(purpose: str | None) -> str:
    if not purpose:
        raise InvalidRequest("Missing the multipart field 'purpose'", param="purpose")
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"'{purpose}' is not a supported purpose; use one of: {', '.join(PURPOSES)}", param="purpose"
        )
    return purpose


def record_file(session: Session, org: Organization, received: ReceivedFile) -> StoredFile:
    """The row for a file whose bytes passed validation and are stored in S3, its data report claimed."""
    ingested = received.ingested
    row = StoredFile(
        id=received.file_id,
        organization_id=org.id,
        filename=safe_filename(received.filename),
        purpose=received.purpose,
        bytes=ingested.bytes,
        status="processed",
        storage_key=received.storage_key,
        sha256=ingested.sha256,
        example_count=ingested.validation.example_count,
        format=ingested.validation.format,
        report_status=PENDING,  # claimed from the start: `report_runs.after_recording` computes it once committed
        report_claimed_at=new_claim(),
    )
    session.add(row)
    session.flush()
    return row


def get_file(session: Session, org: Organization, file_id: str) -> StoredFile:
    return get_owned(session, StoredFile, org.id, file_id, "file")


def list_files(
    session: Session, org: Organization, after: str | None, limit: int, purpose: str | None, newest_first: bool
) -> tuple[list[StoredFile], bool]:
    scope = [StoredFile.organization_id == org.id]
    if purpose:
        scope.append(StoredFile.purpose == purpose)
    return paginate(session, StoredFile, scope, after, limit, newest_first)


def delete_file(session: Session, org: Organization, file_id: str) -> str:
    """Deletes the row and returns the object key, to remove from S3 once the deletion is committed."""
    row = get_file(session, org, file_id)
    session.delete(row)
    session.flush()
    return row.storage_key
