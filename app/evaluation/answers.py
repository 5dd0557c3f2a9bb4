"""Greedy answers to held-out prompts, generated together by the engine that serves requests (the continuous
batcher), with the prompt built by the same function as training's and inference's."""

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from app.chat_format import render_prompt_ids
from app.inference.batching import ContinuousBatcher, TokenStream
from app.inference.detokenize import Detokenizer


def greedy_answers(
    batcher: ContinuousBatcher,
    tokenizer: PreTrainedTokenizerBase,
    end_of_turn_ids: set[int],
    prompts: Sequence[list[dict]],
    adapters: Sequence[str | None],
    max_new_tokens: int,
) -> dict[str | None, list[str]]:
    """One answer per prompt (a conversation ending before the answer) by each adapter (None: the base model).
    Every request is queued at once, so the batcher runs as many together as its batch holds, adapters mixed."""
    prompt_ids = [render_prompt_ids(tokenizer, prompt) for prompt in prompts]
    streams = {
        adapter: [batcher.submit(ids, adapter, max_new_tokens, 0.0, 1.0, None, end_of_turn_ids) for ids in prompt_ids]
        for adapter in adapters
    }
    return {
        adapter: [_text(stream, Detokenizer(tokenizer, end_of_turn_ids, [])) for stream in queued]
        for adapter, queued in streams.items()
    }


def _text(stream: TokenStream, text: Detokenizer) -> str:
    parts = [text.feed(token.id) for token in stream]
    parts.append(text.close())
    return "".join(parts)
