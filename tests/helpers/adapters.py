"""A fine-tuned model of the tiny base model with a real adapter in storage, as a finished job leaves it, and the
greedy reply a model loaded outside the service gives: tests of downloads compare the two."""

import io
import tarfile
from pathlib import Path

import openai
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.core.settings import Settings
from app.core.storage import store_for
from app.ml.base_models.from_settings import registry_from_settings
from app.ml.chat_format import render_prompt_ids
from tests.helpers.jobs import finished_job_with_model
from tests.helpers.tiny_models import TINY_MODEL_ID, conversation
from worker.training import TrainingConfig, save_adapter, train_lora

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "Paris is the capital of France."
MAX_TOKENS = 12


def train_adapter(settings: Settings, directory: Path) -> Path:
    """An adapter of the served tiny model that learnt to answer `QUESTION`, saved in `directory` with its manifest as
    the worker saves one: its greedy reply is several tokens that the base model does not give."""
    model, tokenizer = registry_from_settings(settings).load(TINY_MODEL_ID)
    config = TrainingConfig(n_epochs=12, batch_size=4, learning_rate=3e-2, seed=7, lora_r=8, lora_alpha=16)
    result = train_lora(model, tokenizer, [conversation(QUESTION[0]["content"], ANSWER)] * 4, None, config)
    save_adapter(result.model, directory)
    return directory


def model_with_adapter(settings: Settings, client: openai.OpenAI, adapter: Path) -> tuple[str, str]:
    """(model id, adapter prefix) of a fine-tuned model of the client's organisation whose adapter is `adapter`."""
    _, model_id, prefix = finished_job_with_model(settings, client)
    store_for(settings).upload_directory(prefix, adapter)
    return model_id, prefix


def service_reply(client: openai.OpenAI, model_id: str) -> str:
    reply = client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0)
    return reply.choices[0].message.content or ""


def greedy_reply(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """The reply to `QUESTION` of a model loaded with transformers or peft, greedy, stopping where the service does."""
    prompt = render_prompt_ids(tokenizer, QUESTION)
    with torch.no_grad():
        generated = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(generated[0][len(prompt) :], skip_special_tokens=True)


def extract(tar: bytes, directory: Path) -> list[str]:
    """Extracts a downloaded tar into `directory`; returns the names it holds."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        names = archive.getnames()
        archive.extractall(directory, filter="data")
    return sorted(names)
