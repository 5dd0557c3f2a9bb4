"""`Idempotency-Key` answers are kept `idempotency_ttl_hours` (24 h, as OpenAI), then the maintenance worker's
hourly sweep deletes them: the table does not grow with every create, and a key may be used again afterwards."""

import uuid
from datetime import UTC, datetime, timedelta

import openai
from sqlalchemy import select, update

from app.core.db import transaction
from app.core.queue import EXPIRE_IDEMPOTENCY_TASK
from app.core.settings import Settings
from app.core.tables import IdempotencyRecord
from tests.helpers.datasets import TICKETS, chat_jsonl
from worker.celery.apps import make_maintenance_celery
from worker.idempotency_sweep import expire_idempotency_keys


def _upload(client: openai.OpenAI, key: str, data: bytes) -> str:
    file = client.files.create(file=("t.jsonl", data), purpose="fine-tune", extra_headers={"Idempotency-Key": key})
    return file.id


def _kept_keys(settings: Settings, keys: list[str]) -> set[str]:
    with transaction(settings.require("database_url")) as session:
        return set(session.scalars(select(IdempotencyRecord.key).where(IdempotencyRecord.key.in_(keys))))


def test_answers_older_than_the_ttl_are_deleted_and_their_key_can_be_used_again(
    client: openai.OpenAI, settings: Settings
) -> None:
    old, recent = f"old-{uuid.uuid4().hex}", f"recent-{uuid.uuid4().hex}"
    first = _upload(client, old, chat_jsonl())
    _upload(client, recent, chat_jsonl())
    aged = datetime.now(UTC) - timedelta(hours=settings.idempotency_ttl_hours + 1)
    with transaction(settings.require("database_url")) as session:
        session.execute(update(IdempotencyRecord).where(IdempotencyRecord.key == old).values(created_at=aged))

    with transaction(settings.require("database_url")) as session:
        assert expire_idempotency_keys(session, settings.idempotency_ttl_hours) >= 1

    assert _kept_keys(settings, [old, recent]) == {recent}
    again = _upload(client, old, chat_jsonl(TICKETS * 2))  # another request under the old key: a new file, not a 422
    assert again != first


def test_the_maintenance_beat_runs_the_sweep(settings: Settings) -> None:
    schedule = make_maintenance_celery(settings).conf.beat_schedule
    assert EXPIRE_IDEMPOTENCY_TASK in {entry["task"] for entry in schedule.values()}
