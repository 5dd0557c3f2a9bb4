"""The evaluation report at the end of a job: the fine-tuned model and its base model answer the same held-out
prompts (greedy, through the serving engine's continuous batcher) and are scored side by side."""

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from app.evaluation.answers import greedy_answers
from app.evaluation.report import HeldOutExample, Losses, TokenMetrics, evaluation_report, held_out_examples
from app.inference.batching import ContinuousBatcher
from app.inference.engine import model_end_of_turn_ids
from app.inference.lora_slots import AdapterSlots
from app.jobs.schemas import EvaluationOptions
from worker.training.trainer import TrainingConfig, held_out_metrics

TUNED = "fine-tuned"
BATCH_ROWS = 16  # rows generated together; the serving default


def evaluate_fine_tune(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    adapter_dir: Path,
    held_out: Sequence[list[dict]],
    config: TrainingConfig,
    options: EvaluationOptions,
    losses: Losses | None = None,
    leaked_examples: int = 0,
) -> dict | None:
    """The report, or None when there is nothing to evaluate on. Answers stop at `options.max_tokens`, or earlier
    at twice the longest target's tokens plus 16. Leaves `peft_model` without its adapter (the
    adapter is in `adapter_dir`): the base model then serves both sides through adapter slots."""
    examples = held_out_examples(held_out, options.max_examples)
    if not examples:
        return None
    conversations = [[*example.prompt, {"role": "assistant", "content": example.target}] for example in examples]
    tuned_metrics = held_out_metrics(peft_model, tokenizer, conversations, config)
    with peft_model.disable_adapter():
        base_metrics = held_out_metrics(peft_model, tokenizer, conversations, config)
    answers = _answers(peft_model.unload(), tokenizer, adapter_dir, examples, options.max_tokens)
    return evaluation_report(
        examples,
        answers[None],
        answers[TUNED],
        losses,
        leaked_examples,
        (_token_metrics(base_metrics), _token_metrics(tuned_metrics)),
    )


def _answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    adapter_dir: Path,
    examples: Sequence[HeldOutExample],
    max_tokens: int,
) -> dict[str | None, list[str]]:
    longest_target = max(len(tokenizer(example.target).input_ids) for example in examples)
    slots = AdapterSlots(model, max_slots=1)
    slots.load(TUNED, adapter_dir)
    end_ids = set(model_end_of_turn_ids(model, tokenizer))
    batcher = ContinuousBatcher(model, slots, next(model.parameters()).device, max_batch_size=BATCH_ROWS)
    try:
        prompts = [example.prompt for example in examples]
        max_new_tokens = min(max_tokens, 2 * longest_target + 16)
        return greedy_answers(batcher, tokenizer, end_ids, prompts, [None, TUNED], max_new_tokens)
    finally:
        batcher.close()


def _token_metrics(measured: tuple[float, float] | None) -> TokenMetrics | None:
    return None if measured is None else TokenMetrics(*measured)
