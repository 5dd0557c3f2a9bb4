"""Generation stops at the chat template's end-of-turn token, not only at EOS: a base model given Gemma's template
answers `...<end_of_turn>` and must not run on to `max_tokens`."""

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from app.ml.base_models import BaseModelRegistry, BaseModelSpec
from app.ml.chat_templates import BUILT_IN_TEMPLATES
from app.serving import InferenceEngine
from app.serving.answers import answering, greedy_answers
from app.serving.backend import SamplingParams
from app.serving.remote import RemoteBackend
from app.serving.vllm_backend import end_of_turn_ids_of
from tests.helpers.tiny_models import build_model, build_tokenizer

MODEL_ID = "tiny-gemma-style"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def always_says(model: LlamaForCausalLM, token_id: int) -> LlamaForCausalLM:
    """The model's greedy choice is `token_id` whatever it reads: the first hidden dimension is kept positive by
    the embeddings, the final norm keeps only it, and only `token_id`'s output row reads it."""
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 50.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[token_id, 0] = 10.0
    return model


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """The tiny tokenizer with Gemma's end-of-turn token; its EOS stays `<|im_end|>`."""
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    return tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerFast) -> Path:
    directory = tmp_path_factory.mktemp("gemma-style")
    always_says(build_model(tokenizer), tokenizer.convert_tokens_to_ids("<end_of_turn>")).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def registry(tmp_path: Path, model_dir: Path) -> BaseModelRegistry:
    spec = BaseModelSpec(
        id=MODEL_ID, source="local", location=str(model_dir), gguf_filename=None, lora_target_modules=(),
        max_seq_length=512, created=0, chat_template=BUILT_IN_TEMPLATES["gemma"], chat_template_source="given",
    )  # fmt: skip
    return BaseModelRegistry(cache_dir=tmp_path / "models", catalogue=lambda: [spec])


def test_the_engine_stops_at_the_template_s_end_of_turn_token(registry, tmp_path):
    engine = InferenceEngine(registry, lambda name, destination: None, cache_dir=tmp_path / "adapters")

    completion = engine.generate(MODEL_ID, None, QUESTION, SamplingParams(max_tokens=8, temperature=0))

    assert completion.finish_reason == "stop"
    assert completion.completion_tokens == 1
    assert completion.text == ""


def test_held_out_answers_stop_at_the_template_s_end_of_turn_token(registry):
    model, tokenizer = registry.load(MODEL_ID)

    with answering(model, tokenizer, {}) as (batcher, end_ids):
        answers = greedy_answers(batcher, tokenizer, end_ids, [QUESTION], [None], max_new_tokens=8)

    assert end_ids == {tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id}
    assert answers == {None: [""]}


def test_vllm_and_remote_replicas_stop_at_the_template_s_end_of_turn_token(registry, model_dir):
    tokenizer = registry.tokenizer(MODEL_ID)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")

    assert end_of_turn in end_of_turn_ids_of(model_dir, tokenizer)
    assert end_of_turn in RemoteBackend(["http://127.0.0.1:9"], registry).end_of_turn_ids(MODEL_ID)
