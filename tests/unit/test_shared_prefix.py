"""The system prompt every row of a batch begins with is computed once for the batch: the loss, token accuracy and
LoRA gradients are those of each row computed whole (`full_logits_token_stats`), for every trained family."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from app.ml.chat_format import tokenize_example
from tests.helpers.tiny_families import SERVED_FAMILIES, build_family_model
from worker.training.data import collate
from worker.training.logits import SHARED_PREFIX_MIN_TOKENS, shared_prefix_length
from worker.training.trainer import cpu_bf16_training, full_logits_token_stats, token_stats

SYSTEM = "You are a tiny test assistant. Answer the question you are asked."
QUESTIONS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Hello! How are you today?", "I am fine, thank you."),
    ("Tell me a joke.", "Why did the chicken cross the road?"),
]


def _batch(tokenizer, systems: tuple[str, ...] = (SYSTEM,) * len(QUESTIONS)) -> dict[str, torch.Tensor]:
    chats = [
        [{"role": "system", "content": system}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]
        for system, (q, a) in zip(systems, QUESTIONS, strict=True)
    ]
    return collate([tokenize_example(tokenizer, chat, 256) for chat in chats], tokenizer.pad_token_id)


def test_the_shared_prefix_ends_before_the_first_predicted_answer_token(tokenizer):
    batch = _batch(tokenizer)
    prefix = shared_prefix_length(batch)

    assert prefix >= SHARED_PREFIX_MIN_TOKENS
    assert (batch["input_ids"][:, :prefix] == batch["input_ids"][0, :prefix]).all()
    assert (batch["labels"][:, : prefix + 1] == -100).all()
    assert shared_prefix_length({name: tensor[:1] for name, tensor in batch.items()}) == 0  # one row: nothing shared


def _lora(model):
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, config)


def _loss_and_gradients(stats_of, model, batch):
    stats = stats_of(model, batch)
    (stats.loss_sum / stats.count).backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return stats, gradients


@pytest.mark.parametrize("family", SERVED_FAMILIES)
def test_loss_and_gradients_equal_those_of_whole_rows(tokenizer, family):
    model = _lora(build_family_model(family, tokenizer))
    batch = _batch(tokenizer)

    shared, shared_gradients = _loss_and_gradients(token_stats, model, batch)
    whole, whole_gradients = _loss_and_gradients(full_logits_token_stats, model, batch)

    assert shared_gradients and shared_gradients.keys() == whole_gradients.keys()
    assert (shared.count, shared.correct) == (whole.count, whole.correct)
    assert shared.loss_sum.item() == pytest.approx(whole.loss_sum.item(), rel=1e-5)
    for name, gradient in shared_gradients.items():
        torch.testing.assert_close(gradient, whole_gradients[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", SERVED_FAMILIES)
def test_the_cpu_bf16_training_path_gives_the_loss_of_whole_rows(tokenizer, family):
    """There attention runs in fp32 under its own name; its mask must still hide nothing of the cached prefix."""
    model = _lora(build_family_model(family, tokenizer))
    batch = _batch(tokenizer)

    with cpu_bf16_training(model, enabled=True), torch.autocast("cpu", dtype=torch.bfloat16):
        shared, whole = token_stats(model, batch), full_logits_token_stats(model, batch)

    assert shared.count == whole.count
    assert shared.loss_sum.item() == pytest.approx(whole.loss_sum.item(), rel=2e-2)


def test_rows_without_a_common_system_prompt_are_computed_whole(tokenizer):
    batch = _batch(tokenizer, systems=("Hello", "Answer", "Tell"))

    assert shared_prefix_length(batch) < SHARED_PREFIX_MIN_TOKENS
