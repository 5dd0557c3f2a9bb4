"""Greedy answers to held-out prompts, generated together by the engine that serves requests (the continuous
batcher), with the prompt built by the same function as training's and inference's."""

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.ml.chat_format import render_prompt_ids
from app.serving.batching import ContinuousBatcher, TokenStream
from app.serving.detokenize import Detokenizer
from app.serving.engine import model_end_of_turn_ids
from app.serving.lora_slots import AdapterSlots

BATCH_ROWS = 16  # rows generated together; the serving default


class Stopped(Exception):
    """The caller's `should_stop` said to stop before every answer was generated."""


@contextmanager
def answering(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, adapters: Mapping[str, Path]
) -> Iterator[tuple[ContinuousBatcher, set[int]]]:
    """A continuous batcher on `model` with `adapters` (name → saved directory) in its slots, and the tokens that
    end an answer; the batcher is closed afterwards. `model` stays wrapped by the slots."""
    slots = AdapterSlots(model, max_slots=max(1, len(adapters)))
    for name, directory in adapters.items():
        slots.load(name, directory)
    batcher = ContinuousBatcher(model, slots, next(model.parameters()).device, max_batch_size=BATCH_ROWS)
    try:
        yield batcher, set(model_end_of_turn_ids(model, tokenizer))
    finally:
        batcher.close()


def greedy_answers(
    batcher: ContinuousBatcher,
    tokenizer: PreTrainedTokenizerBase,
    end_of_turn_ids: set[int],
    prompts: Sequence[list[dict[str, Any]]],
    adapters: Sequence[str | None],
    max_new_tokens: int,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str | None, list[str]]:
    """One answer per prompt (a conversation ending before the answer) by each adapter (None: the base model).
    Every request is queued at once, so the batcher runs as many together as its batch holds, adapters mixed.
    `should_stop` is asked before each answer is read; when it says so, the requests left are cancelled and
    `Stopped` is raised."""
    prompt_ids = [render_prompt_ids(tokenizer, prompt) for prompt in prompts]
    streams = {
        adapter: [batcher.submit(ids, adapter, max_new_tokens, 0.0, 1.0, None, end_of_turn_ids) for ids in prompt_ids]
        for adapter in adapters
    }
    answers: dict[str | None, list[str]] = {adapter: [] for adapter in adapters}
    for adapter, queued in streams.items():
        for stream in queued:
            if should_stop is not None and should_stop():
                for left in streams.values():
                    for request in left:
                        request.cancel()
                raise Stopped
            answers[adapter].append(answer_text(stream, tokenizer, end_of_turn_ids))
    return answers


def answer_text(stream: TokenStream, tokenizer: PreTrainedTokenizerBase, end_of_turn_ids: set[int]) -> str:
    """The text of a request's answer, once its stream ends."""
    text = Detokenizer(tokenizer, end_of_turn_ids, [])
    parts = [text.feed(token.id) for token in stream]
    parts.append(text.close())
    return "".join(parts)
