"""The one way conversations become token ids, shared by training and inference.

Training and serving must build prompts identically (SmolLM2's template adds a default system prompt when
there is none), so both go through `render_prompt_ids` / `tokenize_example` here. The assistant spans for
the loss mask come from rendering prefixes of the conversation with the model's own chat template and
diffing them, which works for any template rather than parsing one template's strings.
"""

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label value that torch's cross-entropy skips


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    # Untokenized, the template's output is a str (the library's return type covers every other option too).
    return tokenizer.apply_chat_template(  # type: ignore[return-value]
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # The template already writes any BOS/special tokens into the text, as apply_chat_template does.
    input_ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return input_ids


def _shared_prefix_length(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def render_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids of the conversation followed by the prompt for the assistant's reply."""
    return _encode(tokenizer, _render(tokenizer, messages, add_generation_prompt=True))


def _is_trained(message: dict[str, Any]) -> bool:
    return message.get("role") == "assistant" and message.get("weight", 1) != 0


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], max_length: int, train_on_inputs: bool = False
) -> TokenizedExample:
    """Token ids of a conversation with labels on assistant tokens only, truncated to `max_length`.

    Each trained assistant turn covers its content and its end-of-turn token; the whitespace a template
    puts between turns is left out, as generation stops at the end-of-turn token and never produces it.
    Assistant messages with `"weight": 0` are context only. With `train_on_inputs` every token is labelled.
    """
    input_ids = _encode(tokenizer, _render(tokenizer, messages, add_generation_prompt=False))
    if train_on_inputs:
        return TokenizedExample(input_ids=input_ids[:max_length], labels=input_ids[:max_length])
    labels = [IGNORE_INDEX] * len(input_ids)
    for index, message in enumerate(messages):
        if not _is_trained(message):
            continue
        before = _encode(tokenizer, _render(tokenizer, messages[:index], add_generation_prompt=True))
        through = _encode(tokenizer, _render(tokenizer, messages[: index + 1], add_generation_prompt=False).rstrip())
        start = _shared_prefix_length(before, input_ids)
        end = _shared_prefix_length(through, input_ids)
        labels[start:end] = input_ids[start:end]
    return TokenizedExample(input_ids=input_ids[:max_length], labels=labels[:max_length])
