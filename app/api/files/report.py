"""The data report of a stored file: what makes fine-tunes fail quietly, computed once and kept.

The structural part (duplicates, conflicting targets, answer shape, short targets) is computed right
after upload, off the request path; token counts are computed per base model's tokenizer on first
request. Both stream the file from S3, so their memory does not grow with its size.
"""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.storage import ObjectStore
from app.core.tables import FileTokenStats, StoredFile
from app.ml.base_models.registry import BaseModelRegistry
from app.ml.datasets.stored import iter_examples, profile
from app.ml.datasets.tokens import token_stats
from app.ml.hyperparameters import auto_epochs


def structural_report(session: Session, store: ObjectStore, row: StoredFile) -> dict[str, Any]:
    """The file's report, computing and storing it if this is the first time it is asked for."""
    if row.report is None:
        report = profile(store, row.storage_key).report()
        report["n_epochs_auto"] = auto_epochs(report["counts"]["examples"])
        row.report = report
        row.status_details = status_details(row.example_count, report)
        session.flush()
    return row.report


def token_report(
    session: Session, store: ObjectStore, registry: BaseModelRegistry, row: StoredFile, model_id: str
) -> dict[str, Any]:
    """Token counts under `model_id`'s tokenizer, with the training tokens `n_epochs` = auto would use."""
    stored = session.scalar(
        select(FileTokenStats.stats).where(FileTokenStats.file_id == row.id, FileTokenStats.model == model_id)
    )
    if stored is not None:
        return stored
    spec = registry.get(model_id)
    stats = token_stats(registry.tokenizer(model_id), iter_examples(store, row.storage_key), spec.max_seq_length)
    stats["model"] = model_id
    stats["estimated_training_tokens_auto"] = stats["total_tokens"] * auto_epochs(max(1, stats["examples"]))
    session.add(FileTokenStats(file_id=row.id, model=model_id, stats=stats))
    session.flush()
    return stats


def status_details(example_count: int, report: dict[str, Any]) -> str:
    """One line for the file object: how many examples, and the report's warnings."""
    warnings = report.get("warnings", [])
    text = f"{example_count} {report.get('format') or ''} examples".replace("  ", " ")
    if not warnings:
        return f"{text}; no problems found"
    return f"{text}; {len(warnings)} warning(s): " + " ".join(warning["message"] for warning in warnings[:3])
