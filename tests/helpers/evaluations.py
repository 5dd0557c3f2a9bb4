"""Evaluations on the tiny random-weight model: an API that knows it, a file that keeps a worker busy for a while, and
the evaluation's row as PostgreSQL holds it (attempt, lease) beside what the API shows."""

import json
from collections.abc import Iterator
from contextlib import contextmanager

import openai

from app.api.main import create_app
from app.core.db import transaction
from app.core.settings import Settings
from app.core.tables import Evaluation
from tests.helpers.services import sdk_client, serving

FINISHED = ("succeeded", "failed", "cancelled")


@contextmanager
def tiny_model_api(settings: Settings, key: str) -> Iterator[openai.OpenAI]:
    """An SDK client, with `key`, of an API served with `settings` (the tiny model is among their base models)."""
    with serving(create_app(settings)) as url:
        yield sdk_client(url, key)


def busy_file(examples: int) -> bytes:
    """Chat examples whose answers are long enough that every answer of the tiny model runs to `max_tokens`: an
    evaluation of n examples answers for about n × max_tokens / 16 decode steps."""
    answer = {"role": "assistant", "content": "x " * 99}
    lines = [{"messages": [{"role": "user", "content": f"Ticket {i}: it broke"}, answer]} for i in range(examples)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def create_evaluation(client: openai.OpenAI, **body: object) -> dict:
    return client.post("/evaluations", body=body, cast_to=object)  # type: ignore[return-value]


def retrieve_evaluation(client: openai.OpenAI, evaluation_id: str) -> dict:
    return client.get(f"/evaluations/{evaluation_id}", cast_to=object)  # type: ignore[return-value]


def evaluation_row(settings: Settings, evaluation_id: str) -> Evaluation:
    with transaction(settings.require("database_url")) as session:
        return session.get_one(Evaluation, evaluation_id)
