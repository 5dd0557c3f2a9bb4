"""Held-out evaluation on a worker: the base model and adapters answer the same held-out prompts (greedy, through
the serving engine's continuous batcher) and are measured teacher-forced on the held-out answers."""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.ml.scoring.report import (
    HeldOutExample,
    Losses,
    TokenMetrics,
    evaluation_report,
    held_out_examples,
    preference_report,
)
from app.ml.scoring.settings import EvaluationSettings
from app.serving.answers import Stopped, answering, greedy_answers
from worker.datasets import PreferenceExample
from worker.training.preference import PreferencePair, pair_logps, tokenize_pairs
from worker.training.trainer import TrainingConfig, held_out_metrics, pad_token_id

TUNED = "fine-tuned"
# Tokens an answer may run past the longest held-out target before it is cut: one that long is wrong already, and
# a base model that never stops would otherwise cost the report most of its time.
ANSWER_MARGIN = 8


@dataclass(frozen=True)
class Outcome:
    """Per model (None: the base model alone, else an adapter's name): its answers and its token metrics."""

    answers: dict[str | None, list[str]]
    metrics: dict[str | None, TokenMetrics | None]


def answer_and_measure(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    adapters: Mapping[str, Path],
    examples: Sequence[HeldOutExample],
    config: TrainingConfig,
    max_tokens: int,
    with_base: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> Outcome:
    """Each adapter's (name → saved directory) answers and token metrics on `examples`, and the base model's when
    `with_base`. Answers stop at `max_tokens`, or earlier at `ANSWER_MARGIN` tokens past the longest target. `model` is
    the plain base model; it ends up wrapped by adapter slots. `should_stop` is asked between models' measurements
    and between answers; `Stopped` is raised when it says so."""
    stop = should_stop or (lambda: False)
    conversations = [[*example.prompt, {"role": "assistant", "content": example.target}] for example in examples]
    metrics: dict[str | None, TokenMetrics | None] = {}
    if with_base:
        metrics[None] = _token_metrics(held_out_metrics(model, tokenizer, conversations, config))
    peft_model: PeftModel | None = None
    for name, directory in adapters.items():
        if stop():
            raise Stopped
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, directory, adapter_name=name)
        else:
            peft_model.load_adapter(directory, adapter_name=name)
        peft_model.set_adapter(name)
        metrics[name] = _token_metrics(held_out_metrics(peft_model, tokenizer, conversations, config))
    plain = peft_model.unload() if peft_model is not None else model
    models = [None, *adapters] if with_base else list(adapters)
    return Outcome(_answers(plain, tokenizer, adapters, models, examples, max_tokens, stop), metrics)


def evaluate_fine_tune(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    adapter_dir: Path,
    held_out: Sequence[list[dict]],
    config: TrainingConfig,
    options: EvaluationSettings,
    losses: Losses | None = None,
    leaked_examples: int = 0,
) -> dict | None:
    """A job's report: its fine-tuned model (saved in `adapter_dir`) against its base model; None when there is
    nothing to evaluate on. `peft_model` loses its adapter."""
    examples = held_out_examples(held_out, options.max_examples)
    if not examples:
        return None
    adapters = {TUNED: adapter_dir}
    outcome = answer_and_measure(peft_model.unload(), tokenizer, adapters, examples, config, options.max_tokens)
    return evaluation_report(
        examples,
        outcome.answers[None],
        outcome.answers[TUNED],
        losses,
        leaked_examples,
        (outcome.metrics[None], outcome.metrics[TUNED]),
    )


def evaluate_preference_tune(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    held_out: Sequence[PreferenceExample],
    config: TrainingConfig,
    options: EvaluationSettings,
    losses: Losses | None = None,
    leaked_examples: int = 0,
) -> dict | None:
    """A DPO job's report: how often the fine-tuned model and its base model find the chosen answer of a held-out
    pair the likelier one; None when no pair is left to evaluate on."""
    pairs = tokenize_pairs(tokenizer, held_out[: options.max_examples], config.max_seq_length)
    if not pairs:
        return None
    tuned = _margins(peft_model, pairs, config.batch_size, pad_token_id(tokenizer))
    with peft_model.disable_adapter():
        base = _margins(peft_model, pairs, config.batch_size, pad_token_id(tokenizer))
    return preference_report(base, tuned, losses, leaked_examples)


def _margins(model: PeftModel, pairs: Sequence[PreferencePair], batch_size: int, pad: int) -> list[float]:
    """Per pair: mean log-probability per token of the chosen answer minus that of the rejected one."""
    sums, counts = pair_logps(model, pairs, batch_size, pad)
    means = sums / counts
    return (means[:, 0] - means[:, 1]).tolist()


def _answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    adapters: Mapping[str, Path],
    models: Sequence[str | None],
    examples: Sequence[HeldOutExample],
    max_tokens: int,
    should_stop: Callable[[], bool],
) -> dict[str | None, list[str]]:
    longest_target = max(len(tokenizer(example.target).input_ids) for example in examples)
    with answering(model, tokenizer, adapters) as (batcher, end_ids):
        prompts = [example.prompt for example in examples]
        max_new_tokens = min(max_tokens, longest_target + ANSWER_MARGIN)
        return greedy_answers(batcher, tokenizer, end_ids, prompts, models, max_new_tokens, should_stop)


def _token_metrics(measured: tuple[float, float] | None) -> TokenMetrics | None:
    return None if measured is None else TokenMetrics(*measured)
