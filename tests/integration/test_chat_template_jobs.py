"""A base model's chat template is checked when a job is created, not in the middle of it: a model whose template
cannot be served is refused with the reason, and one with no template trains with Loraport's default, saying so."""

from collections.abc import Iterator

import openai
import pytest

from app.api.main import create_app
from app.core import base_model_records
from app.core.db import transaction
from app.core.queue import producer
from app.core.settings import Settings
from app.core.storage import store_for
from app.core.tables import BaseModelRecord
from app.ml.base_models.adding import AddOptions, add_base_model
from app.ml.base_models.from_settings import registry_from_settings
from app.ml.chat_templates import BUILT_IN_TEMPLATES
from tests.helpers.datasets import TICKETS, chat_jsonl
from tests.helpers.jobs import NO_EVALUATION, event_messages
from tests.helpers.services import sdk_client, serving
from tests.helpers.tiny_models import TINY_MODEL_ID, build_model, build_tokenizer
from worker.job_runner import run_job

NO_TEMPLATE = "tiny-no-template"
WRONG_TEMPLATE = "tiny-gemma-template"  # Gemma's template on a tokenizer that has no <end_of_turn>


@pytest.fixture(scope="module")
def template_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The run's settings once two models without a template are added: one as `add` adds it (it gets the default
    template), and one recorded with Gemma's template although its tokenizer has no <end_of_turn>, as a row of an
    older release, which `add` would now refuse, would be."""
    directory = tmp_path_factory.mktemp("no-template")
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    build_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    add_base_model(settings, NO_TEMPLATE, str(directory), AddOptions(learning_rate=2e-2), say=lambda step: None)
    prefix = base_model_records.weights_prefix(WRONG_TEMPLATE, "r1")
    store_for(settings).upload_directory(prefix, directory)
    with transaction(settings.require("database_url")) as session:
        row = session.get_one(BaseModelRecord, NO_TEMPLATE)
        session.add(
            BaseModelRecord(
                id=WRONG_TEMPLATE, revision="r1", weights_prefix=prefix, architecture=row.architecture,
                parameters=row.parameters, context_length=row.context_length, chat_template=BUILT_IN_TEMPLATES["gemma"],
                chat_template_source="given", lora_target_modules=row.lora_target_modules, lora_rank=16,
                learning_rate=2e-2, max_seq_length=512, quantization=None,
            )
        )  # fmt: skip
    return settings


@pytest.fixture
def template_client(template_settings: Settings, org_key: str) -> Iterator[openai.OpenAI]:
    with serving(create_app(template_settings)) as url:
        yield sdk_client(url, org_key)


def _create(client: openai.OpenAI, model: str) -> str:
    training = client.files.create(file=("tickets.jsonl", chat_jsonl(TICKETS)), purpose="fine-tune")
    return client.fine_tuning.jobs.create(
        model=model, training_file=training.id, hyperparameters={"n_epochs": 1}, extra_body=NO_EVALUATION
    ).id


def test_a_model_whose_template_cannot_be_served_is_refused_when_the_job_is_created(
    template_client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        _create(template_client, WRONG_TEMPLATE)

    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_chat_template" and error["param"] == "model"
    assert f"The base model '{WRONG_TEMPLATE}' cannot be used here" in error["message"]
    assert "'<end_of_turn>', which is not one special token" in error["message"]
    assert template_client.fine_tuning.jobs.list().data == []


def test_a_distillation_teacher_whose_template_cannot_be_served_is_refused(template_client: openai.OpenAI) -> None:
    training = template_client.files.create(file=("tickets.jsonl", chat_jsonl(TICKETS)), purpose="fine-tune")

    with pytest.raises(openai.BadRequestError) as refused:
        template_client.fine_tuning.jobs.create(
            model=NO_TEMPLATE,
            training_file=training.id,
            method={"type": "distillation", "distillation": {"teacher_model": WRONG_TEMPLATE}},  # type: ignore[arg-type, typeddict-item]
        )

    assert refused.value.code == "invalid_chat_template"
    assert refused.value.param == "method.distillation.teacher_model"


def test_a_model_without_a_template_trains_with_the_default_and_says_so(
    template_client: openai.OpenAI, template_settings: Settings
) -> None:
    job_id = _create(template_client, NO_TEMPLATE)
    producer(template_settings).control.purge()  # its message was taken, as by the worker that runs it

    run_job(template_settings, registry_from_settings(template_settings), job_id)

    job = template_client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "succeeded", job.error
    assert "The base model has no chat template: trained with Loraport's default template" in " ".join(
        event_messages(template_client, job_id)
    )


def test_a_model_with_its_own_template_says_nothing_of_the_default(client: openai.OpenAI, settings: Settings) -> None:
    job_id = _create(client, TINY_MODEL_ID)
    producer(settings).control.purge()

    run_job(settings, registry_from_settings(settings), job_id)

    assert client.fine_tuning.jobs.retrieve(job_id).status == "succeeded"
    assert not any("default template" in message for message in event_messages(client, job_id))


def test_an_evaluation_of_a_model_whose_template_cannot_be_served_is_refused(template_client: openai.OpenAI) -> None:
    held_out = template_client.files.create(file=("held-out.jsonl", chat_jsonl(TICKETS)), purpose="fine-tune")

    with pytest.raises(openai.BadRequestError) as refused:
        template_client.post("/evaluations", body={"model": WRONG_TEMPLATE, "file": held_out.id}, cast_to=object)

    assert refused.value.code == "invalid_chat_template" and refused.value.param == "model"
