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
    adapter: str | None,
    max_new_tokens: int,
) -> list[str]:
    """One answer per prompt (a conversation ending before the answer), by `adapter` (None: the base model). All
    prompts are queued at once; the batcher runs as many together as its batch holds."""
    streams = [
        batcher.submit(render_prompt_ids(tokenizer, prompt), adapter, max_new_tokens, 0.0, 1.0, None, end_of_turn_ids)
        for prompt in prompts
    ]
    return [_text(stream, Detokenizer(tokenizer, end_of_turn_ids, [])) for stream in streams]


def _text(stream: TokenStream, text: Detokenizer) -> str:
    parts = [text.feed(token.id) for token in stream]
    parts.append(text.close())
    return "".join(parts)
