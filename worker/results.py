"""The job's results file, as OpenAI writes it: one CSV row per step, validation cells blank between evals."""

import csv
import hashlib
import io

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import ids
from app.storage import ObjectStore, results_key
from app.tables import FineTuningJob, JobEvent, StoredFile

COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
_FROM_EVENT = {"train_accuracy": "train_mean_token_accuracy"}  # OpenAI's CSV and event names differ here


def results_csv(session: Session, job_id: str) -> bytes:
    """The job's metrics events, oldest first, as CSV."""
    rows = session.scalars(
        select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics").order_by(JobEvent.seq)
    )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for data in rows:
        writer.writerow(
            ["" if data.get(_FROM_EVENT.get(c, c)) is None else data[_FROM_EVENT.get(c, c)] for c in COLUMNS]
        )
    return out.getvalue().encode()


def store_results(session: Session, store: ObjectStore, job: FineTuningJob) -> StoredFile:
    """Uploads the CSV and records it as a `fine-tune-results` file of the job's organisation."""
    content = results_csv(session, job.id)
    file_id = ids.file_id()
    key = results_key(job.organization_id, file_id)
    writer = store.writer(key)
    writer.write(content)
    writer.close()
    row = StoredFile(
        id=file_id,
        organization_id=job.organization_id,
        filename="step_metrics.csv",
        purpose="fine-tune-results",
        bytes=len(content),
        status="processed",
        storage_key=key,
        sha256=hashlib.sha256(content).hexdigest(),
        example_count=0,
    )
    session.add(row)
    return row
