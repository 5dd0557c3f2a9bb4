"""Computing claimed data reports for the API process: each on one of its report threads (`report_threads`), in a
child process (`app.core.background_processes`).

For the API process rather than a Celery worker because the API alone (tests, `loraport up` without workers) must
still produce reports. In a child process because profiling a large file is pure Python, which in the API process
would hold the interpreter lock that its requests need. Each computation opens two short transactions of its own,
to read the file's key and to store the result, and holds no connection while it reads the file. The result is
stored only under the claim that scheduled it (`report_claimed_at`/`claimed_at` unchanged), so a computation whose
claim was taken over as stale, or whose file was deleted, stores nothing.
"""

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import structlog
from sqlalchemy import ColumnElement, Executable, delete, select, update
from sqlalchemy.orm import Session

from app.api.files import report
from app.api.files.report import FAILED, PENDING, READY, ReportPart, status_details
from app.api.files.report_threads import Computation, report_threads
from app.core.background_processes import run_in_child
from app.core.db import after_commit, transaction
from app.core.outages import unavailable_service
from app.core.settings import Settings
from app.core.storage import store_for
from app.core.tables import FileTokenStats, StoredFile
from app.ml.base_models.from_settings import registry_from_settings
from app.ml.datasets.stored import iter_examples, profile
from app.ml.datasets.tokens import token_stats
from app.ml.hyperparameters import auto_epochs

log = structlog.get_logger()


def schedule(session: Session, settings: Settings, computation: Computation) -> None:
    """Runs the computation on the report threads once the session's claim is committed."""
    after_commit(session, partial(report_threads(settings.report_workers).submit, computation))


def _in_child(settings: Settings, release: Callable[[], None], target: Callable[..., None], *args: Any) -> None:
    """Runs `target(settings, *args)` in a child process and waits for it; a child that died (killed, out of
    memory) stored nothing, so its claim is given back for the next request to take."""
    exitcode = run_in_child("file-report", settings.background_niceness, target, settings, *args)
    if exitcode != 0:
        log.error("files.report.process_died", exitcode=exitcode, target=target.__name__)
        release()


def _structure(settings: Settings, file_id: str, claim: datetime) -> Computation:
    def release() -> None:
        with transaction(settings.require("database_url")) as session:
            session.execute(
                update(StoredFile)
                .where(_structure_claimed(file_id, claim))
                .values(report_status=None)
                .execution_options(synchronize_session=False)
            )

    return Computation(partial(_in_child, settings, release, compute_structure, file_id, claim), release)


def _tokens(settings: Settings, file_id: str, model_id: str, claim: datetime) -> Computation:
    def release() -> None:
        with transaction(settings.require("database_url")) as session:
            session.execute(delete(FileTokenStats).where(_tokens_claimed(file_id, model_id, claim)))

    return Computation(partial(_in_child, settings, release, compute_tokens, file_id, model_id, claim), release)


def _structure_claimed(file_id: str, claim: datetime) -> ColumnElement[bool]:
    """The file's row while it is still pending under `claim`: a claim taken over, or a deleted file, matches none."""
    return (StoredFile.id == file_id) & (StoredFile.report_status == PENDING) & (StoredFile.report_claimed_at == claim)


def _tokens_claimed(file_id: str, model_id: str, claim: datetime) -> ColumnElement[bool]:
    same = (FileTokenStats.file_id == file_id) & (FileTokenStats.model == model_id)
    return same & (FileTokenStats.status == PENDING) & (FileTokenStats.claimed_at == claim)


def structure(session: Session, settings: Settings, row: StoredFile) -> ReportPart:
    """The structural report or its state, its computation scheduled if this request claimed it."""
    part = report.structure(session, settings, row)
    if part.claim is not None:
        schedule(session, settings, _structure(settings, row.id, part.claim))
    return part


def tokens(session: Session, settings: Settings, row: StoredFile, model_id: str) -> ReportPart:
    """Token counts under `model_id` or their state, their computation scheduled if this request claimed it."""
    part = report.tokens(session, settings, row, model_id)
    if part.claim is not None:
        schedule(session, settings, _tokens(settings, row.id, model_id, part.claim))
    return part


def after_recording(session: Session, settings: Settings, row: StoredFile) -> None:
    """Computes the report of a file just recorded (claimed by `record_file`) once its row is committed, so that
    job creation usually finds it ready."""
    if row.report_claimed_at is not None:
        schedule(session, settings, _structure(settings, row.id, row.report_claimed_at))


def compute_structure(settings: Settings, file_id: str, claim: datetime) -> None:
    """Profiles the stored file and stores its report (and the status line it gives the file object)."""
    url = settings.require("database_url")
    with transaction(url) as session:
        found = session.execute(
            select(StoredFile.storage_key, StoredFile.example_count).where(StoredFile.id == file_id)
        ).first()
    if found is None:
        return  # deleted meanwhile
    storage_key, example_count = found
    claimed = _structure_claimed(file_id, claim)
    try:
        report = profile(store_for(settings), storage_key).report()
        report["n_epochs_auto"] = auto_epochs(report["counts"]["examples"])
        values: dict[str, Any] = {
            "report": report,
            "report_status": READY,
            "status_details": status_details(example_count, report),
        }
    except Exception as error:
        values = _failure(error, "files.report.structure_failed", file_id)
        if not values:
            values = {"report_status": None}  # an outage: released, and the next request claims it again
    with transaction(url) as session:
        session.execute(update(StoredFile).where(claimed).values(**values).execution_options(synchronize_session=False))


def compute_tokens(settings: Settings, file_id: str, model_id: str, claim: datetime) -> None:
    """Counts the file's tokens under `model_id`'s tokenizer, with the training tokens `n_epochs` = auto would use."""
    url = settings.require("database_url")
    with transaction(url) as session:
        storage_key = session.scalar(select(StoredFile.storage_key).where(StoredFile.id == file_id))
    if storage_key is None:
        return
    claimed = _tokens_claimed(file_id, model_id, claim)
    stored = update(FileTokenStats).where(claimed).execution_options(synchronize_session=False)
    try:
        registry = registry_from_settings(settings)
        spec = registry.get(model_id)
        examples = iter_examples(store_for(settings), storage_key)
        stats = token_stats(registry.tokenizer(model_id), examples, spec.max_seq_length)
        stats["model"] = model_id
        stats["estimated_training_tokens_auto"] = stats["total_tokens"] * auto_epochs(max(1, stats["examples"]))
        outcome: Executable = stored.values(status=READY, stats=stats)
    except Exception as error:
        failure = _failure(error, "files.report.tokens_failed", file_id, model=model_id)
        # An outage releases the claim (the next request claims it again); anything else is kept as failed.
        released = delete(FileTokenStats).where(claimed)
        outcome = stored.values(status=FAILED, stats=failure["report"]) if failure else released
    with transaction(url) as session:
        session.execute(outcome)


def _failure(error: Exception, event: str, file_id: str, **fields: str) -> dict[str, Any]:
    """What to store for a computation that raised: nothing for an outage (retried on the next request), else a
    failed report whose message says what to do."""
    if unavailable_service(error) is not None:
        log.warning(event, file_id=file_id, outage=True, error=type(error).__name__, **fields)
        return {}
    log.exception(event, file_id=file_id, **fields)
    message = f"The report could not be computed ({type(error).__name__}); report it if it persists."
    return {"report": {"error": {"code": "report_failed", "message": message}}, "report_status": FAILED}
