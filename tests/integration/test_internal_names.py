"""Answers name the service that failed, never its address (audit #13, API side): an evaluation created while the
broker is down is stored queued (the reaper sends it later) and its answer holds no Redis host or port."""

import openai
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.settings import Settings
from tests.helpers.datasets import chat_jsonl
from tests.helpers.jobs import finished_job_with_model

BROKER_DOWN = "redis://127.0.0.1:1/0"


def test_an_evaluation_created_with_the_broker_down_is_queued_and_names_no_host(
    settings: Settings, client: openai.OpenAI, org_key: str
) -> None:
    _, model_id, _ = finished_job_with_model(settings, client)
    file_id = client.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id

    with TestClient(create_app(settings.model_copy(update={"redis_url": BROKER_DOWN}))) as api:
        answer = api.post(
            "/v1/evaluations",
            headers={"Authorization": f"Bearer {org_key}"},
            json={"model": model_id, "file": file_id},
        )

    assert answer.status_code == 200 and answer.json()["status"] == "queued"
    assert "127.0.0.1" not in answer.text and "redis" not in answer.text.lower()
    assert client.get(f"/evaluations/{answer.json()['id']}", cast_to=dict)["status"] == "queued"
