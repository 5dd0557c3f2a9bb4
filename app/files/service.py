"""Uploading, reading and deleting files; a bad upload leaves nothing behind."""

import hashlib
from collections.abc import Iterator
from typing import IO

from sqlalchemy.orm import Session

from app import ids
from app.errors import InvalidRequest, PayloadTooLarge
from app.files.validation import check_jsonl
from app.pagination import paginate
from app.scoped import get_owned
from app.storage import ObjectStore, file_key
from app.tables import Organization, StoredFile

PURPOSES = ("fine-tune",)


def _lines_counting(stream: IO[bytes], digest: "hashlib._Hash", max_bytes: int) -> Iterator[bytes]:
    size = 0
    for line in stream:
        size += len(line)
        if size > max_bytes:
            raise PayloadTooLarge(f"The file is larger than the limit of {max_bytes} bytes.", param="file")
        digest.update(line)
        yield line


def create_file(
    session: Session,
    store: ObjectStore,
    org: Organization,
    stream: IO[bytes],
    filename: str,
    purpose: str,
    max_bytes: int,
) -> StoredFile:
    """Validates every line, then streams the file to S3 and records it."""
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"'{purpose}' is not a supported purpose; use one of: {', '.join(PURPOSES)}", param="purpose"
        )
    digest = hashlib.sha256()
    report = check_jsonl(_lines_counting(stream, digest, max_bytes))
    if not report.ok:
        raise InvalidRequest(report.summary(), param="file", code="invalid_file_format")
    size = stream.tell()
    stream.seek(0)
    row = StoredFile(
        id=ids.file_id(),
        organization_id=org.id,
        filename=filename,
        purpose=purpose,
        bytes=size,
        status="processed",
        storage_key="",
        sha256=digest.hexdigest(),
        example_count=report.example_count,
    )
    row.storage_key = file_key(org.id, row.id)
    session.add(row)
    session.flush()
    store.upload_stream(row.storage_key, stream)
    return row


def get_file(session: Session, org: Organization, file_id: str) -> StoredFile:
    return get_owned(session, StoredFile, org.id, file_id, "file")


def list_files(
    session: Session,
    org: Organization,
    after: str | None,
    limit: int,
    purpose: str | None,
    newest_first: bool,
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
