"""A base model with no chat template, as a platform team brings one (a base GGUF): the default model with its
template removed, registered through the base-models file, fine-tuned by a real worker with Loraport's default
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
from app.ml.base_models.from_settings import registry_from_settings
from app.ml.base_models.registry import LLAMA_STYLE_PROJECTIONS
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
    directory = tmp_path_factory.mktemp("bare-model")
    weights = registry_from_settings(settings).materialize(settings.default_base_model)
    entry = {
        "id": BARE_MODEL,
        "source": "local",
        "location": str(without_chat_template(weights, directory / "weights")),
        "lora_target_modules": list(LLAMA_STYLE_PROJECTIONS),
        "learning_rate": 2e-3,  # as the default model's entry
    }
    models_file = directory / "base_models.json"
    models_file.write_text(json.dumps([entry]))
    return settings.model_copy(update={"base_models_file": models_file})


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
