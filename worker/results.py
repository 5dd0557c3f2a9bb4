"""The job's results files: its metrics as OpenAI writes them (one CSV row per step, validation cells blank
between evals), and its evaluation report as JSON."""

import csv
import hashlib
import io
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from app.core import ids, job_state
from app.core.storage import ObjectStore, results_key
from app.core.tables import FineTuningJob, StoredFile

COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
_FROM_EVENT = {"train_accuracy": "train_mean_token_accuracy"}  # OpenAI's CSV and event names differ here


def results_csv(session: Session, job_id: str) -> bytes:
    """The job's metrics events, oldest first, as CSV."""
    rows = job_state.metrics(session, job_id)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for data in rows:
        writer.writerow(
            ["" if data.get(_FROM_EVENT.get(c, c)) is None else data[_FROM_EVENT.get(c, c)] for c in COLUMNS]
        )
    return out.getvalue().encode()


def store_results(session: Session, store: ObjectStore, job: FineTuningJob) -> StoredFile:
    """Uploads the metrics CSV as a `fine-tune-results` file of the job's organisation."""
    return _store_result_file(session, store, job, "step_metrics.csv", results_csv(session, job.id))


def store_evaluation(session: Session, store: ObjectStore, job: FineTuningJob, report: dict) -> StoredFile:
    """Uploads the evaluation report as a `fine-tune-results` JSON file of the job's organisation."""
    content = json.dumps(report, indent=2, ensure_ascii=False).encode()
    return _store_result_file(session, store, job, "evaluation.json", content)


def _store_result_file(
    session: Session, store: ObjectStore, job: FineTuningJob, filename: str, content: bytes
) -> StoredFile:
    return store_job_file(session, store, job, filename, content, "fine-tune-results", results_key)


def store_job_file(
    session: Session,
    store: ObjectStore,
    job: FineTuningJob,
    filename: str,
    content: bytes,
    purpose: str,
    key_of: Callable[[str, str], str],
    **details: Any,
) -> StoredFile:
    """Uploads `content` under `key_of(organization id, file id)` and records it as a processed file of the job's
    organisation (`details`: more columns, such as the dataset format)."""
    file_id = ids.file_id()
    key = key_of(job.organization_id, file_id)
    writer = store.writer(key)
    writer.write(content)
    writer.close()
    row = StoredFile(
        id=file_id,
        organization_id=job.organization_id,
        filename=filename,
        purpose=purpose,
        bytes=len(content),
        status="processed",
        storage_key=key,
        sha256=hashlib.sha256(content).hexdigest(),
        **({"example_count": 0} | details),
    )
    session.add(row)
    return row
