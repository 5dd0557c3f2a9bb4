"""A base model with no chat template, as a platform team brings one (a base GGUF): the default model with its
template removed, added as `loraport base-models add` adds models, fine-tuned by a real worker with Loraport's default
template, and served: its answer stops at the end of its turn, not at `max_tokens`."""

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from app.api.main import create_app
from app.core.settings import Settings
from app.ml.base_models.adding import AddOptions, add_base_model
from app.ml.base_models.from_settings import registry_from_settings
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.jobs import NO_EVALUATION, event_messages, wait_for_job
from tests.helpers.services import sdk_client, serving
from tests.helpers.workers import forget_other_jobs, start_training_worker, stop

BARE_MODEL = "smollm2-135m-no-template"
MAX_TOKENS = 64


def without_chat_template(source: Path, destination: Path) -> Path:
    """A copy of the model directory `source` whose tokenizer carries no chat template."""
    shutil.copytree(source, destination)
    (destination / "chat_template.jinja").unlink(missing_ok=True)
    config_path = destination / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    return destination


@pytest.fixture(scope="module")
def bare_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The run's settings, once the bare model is added (every process of the run then knows it)."""
    weights = registry_from_settings(settings).materialize(settings.default_base_model)
    bare = without_chat_template(weights, tmp_path_factory.mktemp("bare-model") / "weights")
    found = add_base_model(settings, BARE_MODEL, str(bare), AddOptions(learning_rate=2e-3), say=lambda step: None)
    assert found.chat_template_source == "default"
    return settings


@pytest.fixture(scope="module")
def worker(bare_settings: Settings) -> Iterator[subprocess.Popen]:
    forget_other_jobs(bare_settings)
    process = start_training_worker(bare_settings)
    yield process
    stop(process)


@pytest.fixture
def bare_client(bare_settings: Settings, org_key: str) -> Iterator[openai.OpenAI]:
    with serving(create_app(bare_settings)) as url:
        yield sdk_client(url, org_key)


def test_a_model_without_a_chat_template_is_fine_tuned_and_stops_after_its_answer(
    bare_client: openai.OpenAI, worker: subprocess.Popen
) -> None:
    training = bare_client.files.create(file=("tickets.jsonl", chat_jsonl(TICKETS)), purpose="fine-tune")
    job = bare_client.fine_tuning.jobs.create(
        model=BARE_MODEL,
        training_file=training.id,
        seed=3,
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2},
        extra_body=NO_EVALUATION,
    )

    finished = wait_for_job(bare_client, job.id)

    assert finished.status == "succeeded", finished.error
    assert any(
        message.startswith("The base model has no chat template: trained with Loraport's default template")
        for message in event_messages(bare_client, job.id)
    )
    reply = bare_client.chat.completions.create(
        model=finished.fine_tuned_model or "",
        messages=[{"role": "user", "content": "Ticket: I was charged twice for my subscription."}],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert reply.usage is not None and reply.usage.completion_tokens < MAX_TOKENS
    assert (choice.message.content or "").startswith("category:")
